"""The speed switches of issue 16 on the CPU: bf16 autocast without a cast cache in the
synthesis warm-up and the audit, the audit's loop-over-models forward, and the variants
benchmark on tiny sizes. (The CUDA-graph captures themselves are exercised in test_cuda.py,
which skips without a GPU.)"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from benchmarks import speed_variants
from fdd.config import AuditConfig
from fdd.distillation.synthesis import DMSynthesizer
from fdd.distillation.training import draw_training_plan, train_network
from fdd.fairness import audit as A
from tests.conftest import write_tiny_idx
from tests.test_audit import fresh_nets, quadrant_data, tiny_audit
from tests.test_synthesis import TINY_NET, tiny_config, tiny_data


def test_config_defaults_keep_todays_behaviour():
    audit = AuditConfig()
    assert (audit.precision, audit.stack_forward) == ("fp32", "auto")
    assert audit.resolved_stack_forward("cpu") == "vmap"  # the CPU keeps vmap


def test_auto_stack_forward_loops_only_on_cuda_under_the_graph():
    audit = AuditConfig()
    assert audit.cuda_graph is False
    assert audit.resolved_stack_forward("cuda") == "vmap"  # eager: one grouped call beats M launches
    graphed = audit.model_copy(update={"cuda_graph": True})
    assert graphed.resolved_stack_forward("cuda") == "loop"
    assert graphed.resolved_stack_forward("cpu") == "vmap"
    for explicit in ("vmap", "loop"):
        forced = graphed.model_copy(update={"stack_forward": explicit})
        assert forced.resolved_stack_forward("cpu") == forced.resolved_stack_forward("cuda") == explicit
    assert tiny_config().precision == "fp32" and not tiny_config().channels_last


def test_bf16_warmup_casts_the_current_weights_every_step():
    """The warm-up runs SGD inside one autocast region; with autocast's cast cache the bf16
    copy of a weight made at the first step would be reused after the weight changed. The
    synthesizer's autocast has no cache, so the warm-up equals autocast around each forward."""
    synth = DMSynthesizer(
        tiny_data(),
        mode="cobra",
        config=tiny_config(precision="bf16", warmup_epochs=3, dsa=False),
        network=TINY_NET,
        seed=0,
    )
    assert synth.autocast._cache_enabled is False
    start = [p.detach().clone() for p in synth.net.parameters()]
    n = synth.syn_images.shape[0]
    plan = draw_training_plan(
        n,
        epochs=3,
        batch_size=synth.config.warmup_batch,
        image_size=tuple(synth.syn_images.shape[-2:]),
        dsa=synth.dsa,
        generator=torch.Generator().manual_seed(1),
        device="cpu",
    )
    synth._warm_up(plan)
    ours = [p.detach().clone() for p in synth.net.parameters()]
    with torch.no_grad():
        for p, value in zip(synth.net.parameters(), start):
            p.copy_(value)
    net = synth.net

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            return net(x).float()

    train_network(
        net,
        synth.syn_images.detach(),
        synth.syn_labels,
        epochs=3,
        lr=synth.config.warmup_lr,
        momentum=synth.config.warmup_momentum,
        weight_decay=synth.config.warmup_weight_decay,
        batch_size=synth.config.warmup_batch,
        dsa=synth.dsa,
        generator=None,
        forward=forward,
        plan=plan,
    )
    for a, b in zip(ours, net.parameters()):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)
    assert any(not torch.equal(a, s) for a, s in zip(ours, start))


@pytest.mark.parametrize("mode", ["vanilla", "fairdd", "cobra"])
def test_bf16_and_channels_last_steps_run_and_keep_fp32_images(mode):
    synth = DMSynthesizer(
        tiny_data(), mode=mode, config=tiny_config(precision="bf16", channels_last=True), network=TINY_NET, seed=0
    )
    for _ in range(2):
        loss = synth.step()
    assert loss.dtype == torch.float32 and bool(torch.isfinite(loss))
    assert synth.syn_images.dtype == torch.float32


@pytest.mark.parametrize("dsa", [False, True])
def test_train_stacked_loop_forward_equals_vmap(dsa):
    from fdd.distillation.augment import DSAConfig

    data = quadrant_data(per_cell=4, seed=0)  # 24 images, batches of 8: shuffled
    x, y = data.normalized(), data.labels
    schedule = dict(
        epochs=3,
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-3,
        batch_size=8,
        dsa=DSAConfig() if dsa else None,
        lr_decay_epoch=1,
    )
    out = {}
    for forward in ("vmap", "loop"):
        nets = A.train_stacked(
            fresh_nets(3), x, y, generator=torch.Generator().manual_seed(0), stack_forward=forward, **schedule
        )
        out[forward] = [[p.detach() for p in n.parameters()] for n in nets]
    for a, b in zip(out["vmap"], out["loop"]):
        for p, q in zip(a, b):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_train_stacked_bf16_trains_close_to_fp32():
    data = quadrant_data(per_cell=4, seed=0)
    x, y = data.normalized(), data.labels
    schedule = dict(epochs=3, lr=0.05, momentum=0.9, weight_decay=5e-3, batch_size=8, dsa=None)
    out = {}
    for precision in ("fp32", "bf16"):
        nets = A.train_stacked(
            fresh_nets(2), x, y, generator=torch.Generator().manual_seed(0), precision=precision, **schedule
        )
        out[precision] = [[p.detach() for p in n.parameters()] for n in nets]
        assert all(p.dtype == torch.float32 for n in nets for p in n.parameters())
    for a, b in zip(out["fp32"], out["bf16"]):
        for p, q in zip(a, b):
            assert bool(torch.isfinite(q).all())
            torch.testing.assert_close(p, q, rtol=0.1, atol=0.05)
    # bf16 did run: rounding the activations moves the trained weights (an ignored precision would not)
    assert any(not torch.equal(p, q) for a, b in zip(out["fp32"], out["bf16"]) for p, q in zip(a, b))


def test_audit_passes_precision_and_stack_forward(monkeypatch):
    seen = {}
    real = A.train_stacked

    def spy(*args, **kwargs):
        seen.update(precision=kwargs["precision"], stack_forward=kwargs["stack_forward"])
        return real(*args, **kwargs)

    monkeypatch.setattr(A, "train_stacked", spy)
    train = quadrant_data(per_cell=4, seed=0)
    test = quadrant_data(per_cell=3, seed=1)
    from fdd.datasets.containers import SyntheticSet

    synthetic = SyntheticSet(
        images=train.normalized(),
        labels=train.labels,
        class_names=train.class_names,
        mean=train.mean,
        std=train.std,
    )
    config = tiny_audit(num_eval=2, epochs=2, precision="bf16", stack_forward="loop")
    A.audit_synthetic(synthetic, test, config=config, network=TINY_NET)
    assert seen == {"precision": "bf16", "stack_forward": "loop"}
    A.audit_synthetic(synthetic, test, config=tiny_audit(num_eval=2, epochs=2), network=TINY_NET)
    assert seen == {"precision": "fp32", "stack_forward": "vmap"}  # auto on the CPU


def test_speed_variants_runs_on_the_cpu(tmp_path: Path):
    write_tiny_idx(tmp_path / "idx")
    code = speed_variants.main(
        [
            "--device",
            "cpu",
            "--idx-dir",
            str(tmp_path / "idx"),
            "--out",
            str(tmp_path / "out"),
            "--width",
            "8",
            "--batch-real",
            "8",
            "--warmup",
            "1",
            "--iterations",
            "2",
            "--eval-epochs",
            "2",
            "--no-compile",
            "--synthesis-variants",
            "baseline,bf16+channels_last",
            "--eval-variants",
            "baseline,loop+bf16",
            "--cells",
            "cobra:2,vanilla:2",
            "--eval-ipcs",
            "2",
        ]
    )
    assert code == 0
    rows = list(csv.DictReader((tmp_path / "out" / "speed_variants.csv").open()))
    assert [(r["kind"], r["variant"], r["mode"]) for r in rows] == [
        ("synthesis", "baseline", "cobra"),
        ("synthesis", "baseline", "vanilla"),
        ("eval", "baseline", "-"),
        ("synthesis", "bf16+channels_last", "cobra"),
        ("synthesis", "bf16+channels_last", "vanilla"),
        ("eval", "loop+bf16", "-"),
    ]
    assert all(r["status"] == "ok" for r in rows), rows
    assert all(float(r["ms_per_iter_median"]) > 0 for r in rows if r["kind"] == "synthesis")
    assert all(float(r["ms_per_iter_back_to_back"]) > 0 for r in rows if r["kind"] == "synthesis")
    assert all(r["ms_per_iter_back_to_back"] == "" for r in rows if r["kind"] == "eval")
    assert all("EXTRAPOLATED" in r["settings"] for r in rows if r["kind"] == "eval")
    assert "Speed variants" in (tmp_path / "out" / "speed_variants.md").read_text()


def test_speed_variants_budget_skips_and_errors_do_not_stop(tmp_path: Path, monkeypatch):
    write_tiny_idx(tmp_path / "idx")

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(speed_variants, "time_eval", broken)
    args = ["--device", "cpu", "--idx-dir", str(tmp_path / "idx"), "--width", "8", "--batch-real", "8"]
    args += ["--warmup", "0", "--iterations", "1", "--no-compile", "--cells", "vanilla:2", "--eval-ipcs", "2"]
    args += ["--synthesis-variants", "baseline", "--eval-variants", "baseline,loop"]
    assert speed_variants.main([*args, "--out", str(tmp_path / "a")]) == 0
    rows = list(csv.DictReader((tmp_path / "a" / "speed_variants.csv").open()))
    assert [r["status"] for r in rows] == ["ok", "error", "error"]
    assert "boom" in rows[1]["error"]
    assert speed_variants.main([*args, "--out", str(tmp_path / "b"), "--budget-s", "0"]) == 0
    rows = list(csv.DictReader((tmp_path / "b" / "speed_variants.csv").open()))
    assert {r["status"] for r in rows} == {"skipped"}


def test_speed_variants_resets_compiled_code_between_jobs_unless_kept(tmp_path: Path, monkeypatch):
    """By default every job starts from a reset of torch.compile's caches; --keep-compiled keeps them
    (a variant's second run then costs what a later audit of a sweep process costs)."""
    write_tiny_idx(tmp_path / "idx")
    resets: list[int] = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(1))
    monkeypatch.setattr(speed_variants, "time_eval", lambda *a, **k: {"eval_s_measured": 1.0})
    args = ["--device", "cpu", "--idx-dir", str(tmp_path / "idx"), "--width", "8", "--no-compile"]
    args += ["--synthesis-variants", "", "--eval-variants", "loop,loop", "--eval-ipcs", "2"]
    assert speed_variants.main([*args, "--out", str(tmp_path / "a")]) == 0
    assert len(resets) == 2  # one after each of the two jobs
    resets.clear()
    assert speed_variants.main([*args, "--out", str(tmp_path / "b"), "--keep-compiled"]) == 0
    assert resets == []
    rows = list(csv.DictReader((tmp_path / "b" / "speed_variants.csv").open()))
    assert [(r["variant"], r["status"]) for r in rows] == [("loop", "ok"), ("loop", "ok")]


def test_capture_confines_errors_to_its_thread_and_pauses_the_garbage_collector(monkeypatch):
    """The capture runs under capture_error_mode="thread_local" (another thread's CUDA calls do not
    invalidate it) with the garbage collector off; the eager runs before it keep collecting."""
    import contextlib
    import gc

    from fdd.distillation import cuda_graph as CG

    seen: dict = {"modes": [], "gc_in_body": []}

    @contextlib.contextmanager
    def fake_graph(graph, capture_error_mode="global", **kwargs):
        seen["modes"].append(capture_error_mode)
        yield

    class FakeStream:
        def __init__(self, *args, **kwargs):
            pass

        def wait_stream(self, other):
            pass

    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: FakeStream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: "graph")
    monkeypatch.setattr(torch.cuda, "graph", fake_graph)

    def body():
        seen["gc_in_body"].append(gc.isenabled())
        return 7

    assert gc.isenabled()
    graph, out = CG.capture(body, device=torch.device("cuda"), eager_runs=2)
    assert (graph, out) == ("graph", 7)
    assert seen["modes"] == ["thread_local"]
    assert seen["gc_in_body"] == [True, True, False]  # two eager runs, then the capture
    assert gc.isenabled()  # turned back on

    def failing():
        if not gc.isenabled():
            raise RuntimeError("capture failed")

    with pytest.raises(RuntimeError, match="capture failed"):
        CG.capture(failing, device=torch.device("cuda"))
    assert gc.isenabled()  # turned back on after a failed capture too


def test_speed_vs_reference_from_speed_variants():
    """fdd's side from a speed_variants.csv: the chosen variants' steady state (median per
    iteration; the last, compiled evaluation run), against the reference's median per iteration
    and 5 of its evaluations; failed rows and other variants are left out."""
    import pandas as pd

    from benchmarks.speed_vs_reference import build_from_variants

    reference = pd.DataFrame(
        [
            ("iteration", 10, "cobra", 0.33),
            ("iteration_median", 10, "cobra", 0.30),
            ("iteration", 50, "cobra", 1.1),
            ("evaluation", 10, "1500_epochs", 20.0),
        ],
        columns=["what", "ipc", "mode", "reference_s"],
    )
    rows = [
        ("synthesis", "bf16", "cobra", 10, "ok", 15.0, ""),
        ("synthesis", "bf16", "cobra", 50, "ok", 100.0, ""),
        ("synthesis", "baseline", "cobra", 10, "ok", 17.0, ""),
        ("synthesis", "bf16", "vanilla", 10, "error", "", ""),
        ("eval", "loop+compile", "-", 10, "ok", "", 30.0),
        ("eval", "loop+compile", "-", 10, "ok", "", 5.0),
    ]
    variants = pd.DataFrame(
        rows, columns=["kind", "variant", "mode", "ipc", "status", "ms_per_iter_median", "eval_s_measured"]
    )
    table = build_from_variants(
        reference, variants, synthesis_variant="bf16", eval_variant="loop+compile", device="GPU", commit="abc"
    ).set_index(["what", "ipc", "mode"])
    assert sorted(table.index) == [("evaluation", 10, "cobra"), ("iteration", 10, "cobra"), ("iteration", 50, "cobra")]
    assert table.loc[("iteration", 10, "cobra"), "fdd_s"] == pytest.approx(0.015)
    assert table.loc[("iteration", 10, "cobra"), "ratio"] == pytest.approx(0.30 / 0.015)  # the median row
    assert table.loc[("iteration", 50, "cobra"), "ratio"] == pytest.approx(1.1 / 0.1)  # no median row: the mean
    evaluation = table.loc[("evaluation", 10, "cobra")]
    assert (evaluation["fdd_s"], evaluation["reference_s"]) == (5.0, 100.0)  # the compiled run; 5 x 20 s
    assert set(table["commit"]) == {"abc"}
