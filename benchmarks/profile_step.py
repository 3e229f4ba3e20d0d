"""Where the time of one synthesis iteration and of one audit epoch goes, on a GPU.

    python benchmarks/profile_step.py --device cuda --modes vanilla,cobra --out benchmarks/results

For each mode, builds :class:`fdd.distillation.synthesis.DMSynthesizer` on C-MNIST (foreground) with
the given variant (``compile``, ``graph``), warms it up, then records ``--steps`` steps
with :mod:`torch.profiler` and prints (and writes, as ``profile_<tag>.md``):

- the wall time per step and the device time of the ``fdd.warmup`` / ``fdd.match``
  ranges that :meth:`DMSynthesizer.step` marks;
- the kernels with the most device time.

With ``--audit-epochs`` it does the same for that many epochs of the stacked audit
training (:func:`fdd.fairness.audit.train_stacked`). The numbers say whether a phase is bound by
the GPU's work (device time close to wall time) or by launches (device time far below).

Each cell also gets a **roofline line** (:mod:`benchmarks.roofline`): the FLOPs and bytes of
one iteration (one audit epoch: the run's counts over ``--audit-epochs``), counted with
:class:`torch.utils.flop_counter.FlopCounterMode` and a byte-counting dispatch mode on an
**eager** step of the same configuration (a CUDA graph replay or a compiled graph cannot be
counted); the bytes are the unfused upper bound (every aten op reads its inputs and writes
its outputs) with the distinct-buffer lower bound beside it. The time those need at the
device's peak (compute: FLOPs / peak FLOP/s of the dtype in use; memory: bytes / peak
bandwidth; roofline: the larger, naming the bound) is set against the measured wall time per
step (timed without the profiler), as ``measured / roofline``. Peaks come from
:data:`benchmarks.roofline.PEAKS` (H100 SXM, H200) or ``--peak-tflops`` / ``--peak-gbps``.
On the CPU the profiler tables are skipped; the counting and the timing still run:

    python benchmarks/profile_step.py --device cpu --idx-dir DIR --width 8 --ipc 2 --batch-real 8 \
        --variant eager --peak-tflops 0.1 --peak-gbps 20
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.roofline import Counts, Peak, compute_dtype, count_step, counts_line, peak_for, roofline
from fdd.config import AuditConfig, NetworkConfig, SynthesisConfig
from fdd.datasets.colored import build_colored
from fdd.datasets.sources import load_idx_folder, load_raw
from fdd.distillation.augment import DSAConfig
from fdd.distillation.synthesis import DMSynthesizer
from fdd.fairness.audit import train_stacked
from fdd.models.networks import build_network


def _device_ms(event) -> float:
    return getattr(event, "device_time_total", getattr(event, "cuda_time_total", 0.0)) / 1000.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _profile(run, *, steps: int, device: torch.device, row_limit: int) -> tuple[float, str, dict[str, float]]:
    _sync(device)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            run()
        _sync(device)
    wall_ms = (time.perf_counter() - start) * 1000 / steps
    events = prof.key_averages()
    ranges = {e.key: _device_ms(e) / steps for e in events if e.key.startswith("fdd.")}
    kernels = sum(_device_ms(e) for e in events if e.device_type == torch.autograd.DeviceType.CUDA) / steps
    ranges["all kernels"] = kernels
    table = events.table(
        sort_by="device_time_total" if hasattr(events[0], "device_time_total") else "cuda_time_total",
        row_limit=row_limit,
    )
    return wall_ms, table, ranges


VARIANT_PARTS = ("eager", "compile", "graph")
ERR_VARIANT = "--variant is a '+'-joined subset of {allowed}; got {value!r}"


def _time(run, *, steps: int, device: torch.device) -> float:
    """Seconds per call of ``run``, unprofiled."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        run()
    _sync(device)
    return (time.perf_counter() - start) / steps


def _roofline_lines(
    label: str, counts: Counts, peak: Peak | None, measured_s: float, kernels_ms: float | None
) -> list[str]:
    """The roofline line of one cell (or the counts alone when no peak is known) and the op breakdown."""
    if peak is None:
        head = (
            f"roofline {label}: no peak known for this device (pass --peak-tflops and --peak-gbps); "
            f"measured {measured_s * 1e3:.3f} ms"
        )
    else:
        line = roofline(counts, peak, measured_s=measured_s)
        head = line.line(label)
        if kernels_ms is not None and line.roofline_s:
            head += f"; kernels alone {kernels_ms:.3f} ms = {kernels_ms / 1e3 / line.roofline_s:.2f}x roofline"
    return [head, f"  counted: {counts_line(counts)}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--data-root", default="data/raw")
    parser.add_argument("--idx-dir", default=None, help="a folder of MNIST-named IDX files to use instead of MNIST")
    parser.add_argument("--modes", default="vanilla,cobra")
    parser.add_argument("--variant", default="compile+graph", help="'+'-joined: eager, compile, graph")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--width", type=int, default=NetworkConfig().width)
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--batch-real", type=int, default=600)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup-steps", type=int, default=8, help="untimed steps first (compilation, graph capture)")
    parser.add_argument("--audit-epochs", type=int, default=50)
    parser.add_argument("--row-limit", type=int, default=18)
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="peak TFLOP/s of the dtype in use (overrides the table)"
    )
    parser.add_argument(
        "--peak-gbps", type=float, default=None, help="peak memory bandwidth in GB/s (overrides the table)"
    )
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--tag", default="")
    args = parser.parse_args(argv)
    parts = set(args.variant.split("+"))
    if not parts <= set(VARIANT_PARTS):
        parser.error(ERR_VARIANT.format(allowed=VARIANT_PARTS, value=args.variant))
    if args.steps < 1 or args.warmup_steps < 0 or args.audit_epochs < 0:
        parser.error("--steps must be >= 1, --warmup-steps and --audit-epochs >= 0")
    for flag, value in (("--peak-tflops", args.peak_tflops), ("--peak-gbps", args.peak_gbps)):
        if value is not None and not value > 0:
            parser.error(f"{flag} must be a positive number; got {value}")
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    raw = load_idx_folder(args.idx_dir) if args.idx_dir else load_raw("mnist", root=args.data_root, download=False)
    data = build_colored(raw, bias="foreground", seed=0)
    network = NetworkConfig(width=args.width)
    device_name = torch.cuda.get_device_name(device) if on_cuda else (platform.processor() or platform.machine())
    dtype = compute_dtype(args.precision, device)
    peak = peak_for(device_name, dtype, tflops=args.peak_tflops, gbps=args.peak_gbps)
    audit_peak = peak_for(device_name, compute_dtype("fp32", device), tflops=args.peak_tflops, gbps=args.peak_gbps)
    tf32_note = (
        f"cuDNN convolutions may use TF32 tensor cores: {torch.backends.cudnn.allow_tf32}; "
        f"matmuls: {torch.backends.cuda.matmul.allow_tf32}"
    )
    lines = [
        "# Profile of one synthesis iteration and of audit epochs\n",
        f"Machine: {device_name}; torch {torch.__version__}; Python {platform.python_version()}\n",
        f"C-MNIST (foreground), IPC {args.ipc}, batch_real {args.batch_real}, width {args.width}, "
        f"precision {args.precision}, variant `{args.variant}`; "
        f"{args.steps} profiled steps after {args.warmup_steps} warm-up steps. Device times are summed kernel times per step.\n",
        f"Roofline: FLOPs and bytes counted on one eager step of the same configuration (a CUDA graph replay "
        f"or a compiled graph cannot be counted); bytes unfused = every aten op reads its inputs and writes its "
        f"outputs (upper bound), distinct buffers = each buffer once (lower bound); measured = wall time per "
        f"step without the profiler. Peak used: {peak.describe() if peak else 'none known'} "
        f"(audit, fp32 models: {audit_peak.describe() if audit_peak else 'none known'}); {tf32_note}.\n",
    ]
    print(lines[-1], flush=True)
    if not on_cuda:
        note = f"torch.profiler tables skipped on {device.type} (they report CUDA kernel times); wall times and roofline only.\n"
        print(note, flush=True)
        lines.append(note)
    for mode in args.modes.split(","):
        config = SynthesisConfig(
            modes=(mode,),
            ipc=args.ipc,
            iterations=1,
            batch_real=args.batch_real,
            precision=args.precision,
            compile="compile" in parts,
            cuda_graph="graph" in parts,
        )
        synth = DMSynthesizer(data.train, mode=mode, config=config, network=network, seed=0, device=device)
        for _ in range(args.warmup_steps):
            synth.step()
        measured = _time(synth.step, steps=args.steps, device=device)
        kernels_ms = None
        if on_cuda:
            wall, table, ranges = _profile(synth.step, steps=args.steps, device=device, row_limit=args.row_limit)
            kernels_ms = ranges["all kernels"]
            head = f"## {mode}: {wall:.2f} ms wall per step; " + ", ".join(f"{k} {v:.2f} ms" for k, v in ranges.items())
            body = ["```", table, "```\n"]
        else:
            head, body = f"## {mode}: {measured * 1e3:.2f} ms wall per step", []
        del synth
        eager = DMSynthesizer(
            data.train,
            mode=mode,
            config=config.model_copy(update={"compile": False, "cuda_graph": False}),
            network=network,
            seed=0,
            device=device,
        )
        eager.step()
        counts = count_step(eager.step)
        del eager
        cell = _roofline_lines(
            f"{mode} (eager step counted, variant `{args.variant}` timed)", counts, peak, measured, kernels_ms
        )
        print(head, *cell, sep="\n", flush=True)
        if body:
            print(body[1], flush=True)
        lines += [head + "\n", *(c + "\n" for c in cell), *body]
    if args.audit_epochs:
        audit = AuditConfig()
        num_classes = data.test.num_classes
        nets = [
            build_network(
                input_shape=data.test.image_shape, num_classes=num_classes, network=network, seed=s, device=device
            )
            for s in range(audit.num_eval)
        ]
        images = torch.randn(num_classes * args.ipc, *data.test.image_shape, device=device)
        labels = torch.arange(num_classes, device=device).repeat_interleave(args.ipc)
        generator = torch.Generator(device=device).manual_seed(0)

        def epochs() -> None:
            train_stacked(
                nets,
                images,
                labels,
                epochs=args.audit_epochs,
                lr=audit.lr,
                momentum=audit.momentum,
                weight_decay=audit.weight_decay,
                batch_size=audit.batch_size,
                dsa=DSAConfig(),
                generator=generator,
            )

        epochs()
        measured = _time(epochs, steps=1, device=device) / args.audit_epochs
        kernels_ms = None
        if on_cuda:
            wall, table, ranges = _profile(epochs, steps=1, device=device, row_limit=args.row_limit)
            kernels_ms = ranges["all kernels"] / args.audit_epochs
            head = (
                f"## audit, {audit.num_eval} stacked models: {wall / args.audit_epochs:.2f} ms wall per epoch; "
                f"all kernels {kernels_ms:.2f} ms per epoch"
            )
            body = ["```", table, "```\n"]
        else:
            head, body = f"## audit, {audit.num_eval} stacked models: {measured * 1e3:.2f} ms wall per epoch", []
        counts = count_step(epochs).scaled(1 / args.audit_epochs)
        cell = _roofline_lines(
            f"audit epoch (eager, counted over {args.audit_epochs} epochs incl. set-up, per epoch)",
            counts,
            audit_peak,
            measured,
            kernels_ms,
        )
        print(head, *cell, sep="\n", flush=True)
        if body:
            print(body[1], flush=True)
        lines += [head + "\n", *(c + "\n" for c in cell), *body]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"profile_{device.type}{args.tag}.md").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
