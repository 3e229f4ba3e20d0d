"""Speed of the DM iteration and of the evaluation under each speed switch, in one process.

    python benchmarks/speed_variants.py --device cuda --out benchmarks/results/speed_variants_h200 --budget-s 420

Issue 16's targets, measured on C-MNIST (foreground), the data of ``profile_step.py``:

- **synthesis** (``kind=synthesis``): milliseconds per outer iteration of
  :class:`fdd.distillation.synthesis.DMSynthesizer` (median of ``--iterations`` iterations, each
  followed by a device synchronisation, after ``--warmup`` untimed ones, which include the
  eager calls, compilation and the CUDA-graph capture; then ``ms_per_iter_back_to_back``: the
  mean over as many iterations run back to back with one synchronisation at the end, as a
  run's loop runs them, where the next iteration's draws overlap this one's device work), for
  the cells vanilla / fairdd / cobra at IPC 10 and cobra at IPC 50, under the variants of
  :data:`SYNTHESIS_VARIANTS`;
- **evaluation** (``kind=eval``): seconds of :func:`fdd.fairness.audit.train_stacked` training
  ``--num-eval`` stacked models for ``--eval-epochs + 1`` epochs on an IPC 10 and an IPC 50 set,
  under the variants of :data:`EVAL_VARIANTS`. With ``--eval-epochs`` below 1500 the column
  ``eval_s_1500_extrapolated`` scales the measured time linearly to 1501 epochs (set-up and
  capture included in the scaling: an upper bound), and says so.

Each variant runs in its own try/except: a failure is printed, written as a row with its error,
and the next variant runs. Rows go to ``speed_variants.csv`` as they are measured (flushed);
``speed_variants.md`` is rewritten after each row. ``--budget-s`` stops starting new variants once
that many seconds have passed. The jobs run in priority order (baselines first).

After each job ``torch.compile``'s caches are reset (``torch._dynamo.reset()``), so a
compiled variant listed twice re-traces in its second run (Inductor's on-disk cache spares most
of the compilation). ``--keep-compiled`` keeps them: the second run then costs what a later audit
costs in a sweep process, where every audit of one shape reuses the first one's build.
"""

from __future__ import annotations

import argparse
import csv
import gc
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fdd.config import AuditConfig, NetworkConfig, SynthesisConfig
from fdd.datasets.colored import build_colored
from fdd.datasets.sources import load_idx_folder, load_raw
from fdd.distillation.augment import DSAConfig
from fdd.distillation.synthesis import DMSynthesizer
from fdd.fairness.audit import train_stacked
from fdd.models.networks import build_network

#: name -> SynthesisConfig overrides on top of the paper preset's (fp32, compile, CUDA graph)
SYNTHESIS_VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "bf16+channels_last": {"precision": "bf16", "channels_last": True},
    "bf16": {"precision": "bf16"},
    "channels_last": {"channels_last": True},
    "bf16+channels_last-nocompile": {"precision": "bf16", "channels_last": True, "compile": False},
    "baseline-nocompile": {"compile": False},
}
#: name -> train_stacked keyword overrides on top of the paper preset's (fp32, vmap, CUDA graph)
EVAL_VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "loop": {"stack_forward": "loop"},
    "bf16": {"precision": "bf16"},
    "loop+bf16": {"stack_forward": "loop", "precision": "bf16"},
    "nograph": {"cuda_graph": False},
    "loop+compile": {"stack_forward": "loop", "compile": True},
    "loop+compile+bf16": {"stack_forward": "loop", "compile": True, "precision": "bf16"},
    "compile": {"compile": True},
    "compile+bf16": {"compile": True, "precision": "bf16"},
}
CELLS: tuple[tuple[str, int], ...] = (("cobra", 10), ("vanilla", 10), ("fairdd", 10), ("cobra", 50))
FIELDS = (
    "kind",
    "variant",
    "mode",
    "ipc",
    "status",
    "ms_per_iter_median",
    "ms_p10",
    "ms_p90",
    "ms_per_iter_back_to_back",
    "eval_epochs_run",
    "eval_s_measured",
    "eval_s_1500_extrapolated",
    "setup_s",
    "settings",
    "error",
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cleanup(device: torch.device, *, reset_compiled: bool = True) -> None:
    gc.collect()
    if reset_compiled:  # new networks every cell: keep dynamo's per-code cache from filling up
        torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def machine(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return (
        f"{name}; torch {torch.__version__}; CUDA {torch.version.cuda}; cuDNN {cudnn}; "
        f"Python {platform.python_version()}; {torch.get_num_threads()} CPU threads; "
        f"cuDNN TF32 {torch.backends.cudnn.allow_tf32}, matmul TF32 {torch.backends.cuda.matmul.allow_tf32}"
    )


def time_synthesis(
    data, *, mode: str, ipc: int, overrides: dict[str, Any], args, device: torch.device
) -> dict[str, Any]:
    settings: dict[str, Any] = dict(
        modes=(mode,),
        ipc=ipc,
        iterations=1,
        batch_real=args.batch_real,
        precision="fp32",
        channels_last=False,
        compile=not args.no_compile,
        cuda_graph=device.type == "cuda",
    )
    settings.update(overrides)
    config = SynthesisConfig(**settings)
    start = time.perf_counter()
    synth = DMSynthesizer(
        data.train, mode=mode, config=config, network=NetworkConfig(width=args.width), seed=0, device=device
    )
    for _ in range(args.warmup):
        synth.step()
    _sync(device)
    setup = time.perf_counter() - start
    times = []
    for _ in range(args.iterations):
        t0 = time.perf_counter()
        loss = synth.step()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    # back to back, one synchronisation at the end: a run's loop synchronises only to log or checkpoint, so
    # the next iteration's draws and launches overlap the device's work on this one
    t0 = time.perf_counter()
    for _ in range(args.iterations):
        loss = synth.step()
    _sync(device)
    back_to_back = (time.perf_counter() - t0) * 1e3 / max(args.iterations, 1)
    if not bool(torch.isfinite(loss)):
        raise FloatingPointError(f"loss is {float(loss)} after {synth.iteration} iterations")
    times.sort()
    graph = "whole step" if synth.captured_step is not None else "warm-up" if synth.captured_warmup else "none"
    del synth
    return {
        "ms_per_iter_median": round(statistics.median(times), 4),
        "ms_p10": round(times[len(times) // 10], 4),
        "ms_p90": round(times[(len(times) * 9) // 10], 4),
        "ms_per_iter_back_to_back": round(back_to_back, 4),
        "setup_s": round(setup, 2),
        "settings": f"{overrides or 'paper preset'}; graph {graph}",
    }


def time_eval(data, *, ipc: int, overrides: dict[str, Any], args, device: torch.device) -> dict[str, Any]:
    audit = AuditConfig()
    num_classes = data.test.num_classes
    network = NetworkConfig(width=args.width)
    nets = [
        build_network(
            input_shape=data.test.image_shape, num_classes=num_classes, network=network, seed=s, device=device
        )
        for s in range(args.num_eval)
    ]
    generator = torch.Generator(device=device).manual_seed(0)
    images = torch.randn(num_classes * ipc, *data.test.image_shape, device=device, generator=generator)
    labels = torch.arange(num_classes, device=device).repeat_interleave(ipc)
    epochs = args.eval_epochs + 1  # the audit's range(epochs + 1)
    kwargs: dict[str, Any] = dict(cuda_graph=device.type == "cuda", precision="fp32", stack_forward="vmap")
    kwargs.update(overrides)
    _sync(device)
    start = time.perf_counter()
    train_stacked(
        nets,
        images,
        labels,
        epochs=epochs,
        lr=audit.lr,
        momentum=audit.momentum,
        weight_decay=audit.weight_decay,
        batch_size=audit.batch_size,
        dsa=DSAConfig(),
        generator=generator,
        lr_decay_epoch=args.eval_epochs // 2 + 1,
        **kwargs,
    )
    _sync(device)
    seconds = time.perf_counter() - start
    for net in nets:
        if not all(bool(torch.isfinite(p).all()) for p in net.parameters()):
            raise FloatingPointError("non-finite weights after training")
    full = 1501
    return {
        "eval_epochs_run": epochs,
        "eval_s_measured": round(seconds, 3),
        "eval_s_1500_extrapolated": round(seconds * full / epochs, 3) if epochs != full else round(seconds, 3),
        "settings": f"{overrides or 'paper preset'}; {args.num_eval} models"
        + ("" if epochs == full else f"; EXTRAPOLATED x{full}/{epochs} from {epochs} epochs"),
    }


def jobs(args) -> list[tuple[str, str, str, int, Callable[..., dict[str, Any]], dict[str, Any]]]:
    """(kind, variant, mode, ipc, timer, overrides) in priority order: baselines first."""
    synth = [v for v in args.synthesis_variants.split(",") if v]
    evals = [v for v in args.eval_variants.split(",") if v]
    cells = [(m, int(i)) for m, i in (c.split(":") for c in args.cells.split(",") if c)]
    eval_ipcs = [int(i) for i in args.eval_ipcs.split(",") if i]
    for name in synth:
        if name not in SYNTHESIS_VARIANTS:
            raise SystemExit(f"unknown synthesis variant {name!r}; known: {list(SYNTHESIS_VARIANTS)}")
    for name in evals:
        if name not in EVAL_VARIANTS:
            raise SystemExit(f"unknown eval variant {name!r}; known: {list(EVAL_VARIANTS)}")
    out: list = []
    for k, name in enumerate(synth):
        out += [("synthesis", name, m, i, time_synthesis, SYNTHESIS_VARIANTS[name]) for m, i in cells]
        if k == 0:  # the eval baseline right after the synthesis baseline
            out += [("eval", e, "-", i, time_eval, EVAL_VARIANTS[e]) for e in evals[:1] for i in eval_ipcs]
        if k == 1:
            out += [("eval", e, "-", i, time_eval, EVAL_VARIANTS[e]) for e in evals[1:] for i in eval_ipcs]
    if len(synth) < 2:
        out += [("eval", e, "-", i, time_eval, EVAL_VARIANTS[e]) for e in evals[1:] for i in eval_ipcs]
    if not synth:
        out = [("eval", e, "-", i, time_eval, EVAL_VARIANTS[e]) for e in evals for i in eval_ipcs]
    return out


#: The markdown tables: per kind of job, its title and (column, row key) pairs.
MARKDOWN_TABLES: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "synthesis": (
        "## Synthesis: ms per DM iteration (median; p10-p90)",
        (
            ("variant", "variant"),
            ("mode", "mode"),
            ("IPC", "ipc"),
            ("ms", "ms_per_iter_median"),
            ("p10", "ms_p10"),
            ("p90", "ms_p90"),
            ("ms back to back", "ms_per_iter_back_to_back"),
            ("set-up s", "setup_s"),
            ("status", "status"),
            ("error", "error"),
        ),
    ),
    "eval": (
        "## Evaluation: stacked training, seconds",
        (
            ("variant", "variant"),
            ("IPC", "ipc"),
            ("epochs run", "eval_epochs_run"),
            ("s measured", "eval_s_measured"),
            ("s for 1501 epochs", "eval_s_1500_extrapolated"),
            ("note", "settings"),
            ("status", "status"),
            ("error", "error"),
        ),
    ),
}


def write_markdown(path: Path, rows: list[dict[str, Any]], header: str) -> None:
    """``header``, then one table per kind of job (pandas' ``to_markdown``)."""
    lines = [header, ""]
    for kind, (title, columns) in MARKDOWN_TABLES.items():
        table = [{name: row.get(key, "") for name, key in columns} for row in rows if row["kind"] == kind]
        if table:
            lines += [title, "", pd.DataFrame(table).to_markdown(index=False), ""]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data-root", default="data/raw")
    parser.add_argument("--idx-dir", default=None, help="a folder of MNIST-named IDX files to use instead of MNIST")
    parser.add_argument("--out", required=True)
    parser.add_argument("--budget-s", type=float, default=420.0, help="start no new job after this many seconds")
    parser.add_argument("--synthesis-variants", default=",".join(SYNTHESIS_VARIANTS))
    parser.add_argument("--eval-variants", default=",".join(EVAL_VARIANTS))
    parser.add_argument("--cells", default=",".join(f"{m}:{i}" for m, i in CELLS), help="mode:ipc,...")
    parser.add_argument("--eval-ipcs", default="10,50")
    parser.add_argument("--width", type=int, default=NetworkConfig().width)
    parser.add_argument("--batch-real", type=int, default=SynthesisConfig().batch_real)
    parser.add_argument("--warmup", type=int, default=6, help="untimed iterations (eager calls, compile, capture)")
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--num-eval", type=int, default=AuditConfig().num_eval)
    parser.add_argument(
        "--eval-epochs", type=int, default=1500, help="below 1500: timed on fewer epochs and extrapolated (labelled)"
    )
    parser.add_argument("--no-compile", action="store_true", help="baseline without torch.compile (CPU tests)")
    parser.add_argument(
        "--keep-compiled",
        action="store_true",
        help="keep torch.compile's caches between jobs: a variant listed twice then times its second run as a "
        "sweep process runs its later audits (no re-tracing); by default they are reset after each job, so a "
        "second run re-traces and only reuses Inductor's on-disk cache",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    raw = load_idx_folder(args.idx_dir) if args.idx_dir else load_raw("mnist", root=args.data_root, download=False)
    data = build_colored(raw, bias="foreground", seed=0)
    header = (
        f"# Speed variants (issue 16)\n\nMachine: {machine(device)}\n\n"
        f"C-MNIST (foreground), width {args.width}, batch_real {args.batch_real}; synthesis: median of "
        f"{args.iterations} iterations after {args.warmup} untimed; eval: {args.num_eval} stacked models, "
        f"{args.eval_epochs + 1} epochs run; budget {args.budget_s:.0f} s."
    )
    print(header, flush=True)
    rows: list[dict[str, Any]] = []
    with (out / "speed_variants.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        handle.flush()
        for kind, variant, mode, ipc, timer, overrides in jobs(args):
            elapsed = time.perf_counter() - started
            row: dict[str, Any] = {"kind": kind, "variant": variant, "mode": mode, "ipc": ipc}
            if elapsed > args.budget_s:
                row.update(status="skipped", error=f"budget: {elapsed:.0f} s of {args.budget_s:.0f} s spent")
            else:
                try:
                    kwargs = {"mode": mode} if kind == "synthesis" else {}
                    row.update(timer(data, ipc=ipc, overrides=overrides, args=args, device=device, **kwargs))
                    row["status"] = "ok"
                except Exception as error:  # noqa: BLE001 - one variant's failure must not stop the others
                    traceback.print_exc()
                    row.update(status="error", error=f"{type(error).__name__}: {str(error)[:300]}".replace("\n", " "))
                finally:
                    _cleanup(device, reset_compiled=not args.keep_compiled)
            rows.append(row)
            writer.writerow({k: row.get(k, "") for k in FIELDS})
            handle.flush()
            write_markdown(out / "speed_variants.md", rows, header)
            print(f"[{time.perf_counter() - started:6.1f} s] {row}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
