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

from fdd.config import AuditConfig, NetworkConfig, SynthesisConfig
from fdd.datasets.colored import build_colored
from fdd.datasets.sources import load_raw
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
    table = events.table(sort_by="device_time_total" if hasattr(events[0], "device_time_total") else "cuda_time_total", row_limit=row_limit)
    return wall_ms, table, ranges


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--data-root", default="data/raw")
    parser.add_argument("--modes", default="vanilla,cobra")
    parser.add_argument("--variant", default="compile+graph")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--batch-real", type=int, default=600)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--audit-epochs", type=int, default=50)
    parser.add_argument("--row-limit", type=int, default=18)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    device = torch.device(args.device)
    raw = load_raw("mnist", root=args.data_root, download=False)
    data = build_colored(raw, bias="foreground", seed=0)
    network = NetworkConfig()
    parts = set(args.variant.split("+"))
    lines = [
        "# Profile of one synthesis iteration and of audit epochs\n",
        f"Machine: {torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.machine()}; torch {torch.__version__}; Python {platform.python_version()}\n",
        f"C-MNIST (foreground), IPC {args.ipc}, batch_real {args.batch_real}, variant `{args.variant}`; "
        f"{args.steps} profiled steps after warm-up. Device times are summed kernel times per step.\n",
    ]
    for mode in args.modes.split(","):
        config = SynthesisConfig(
            modes=(mode,), ipc=args.ipc, iterations=1, batch_real=args.batch_real,
            compile="compile" in parts, cuda_graph="graph" in parts,
        )
        synth = DMSynthesizer(data.train, mode=mode, config=config, network=network, seed=0, device=device)
        for _ in range(8):
            synth.step()
        wall, table, ranges = _profile(synth.step, steps=args.steps, device=device, row_limit=args.row_limit)
        head = f"## {mode}: {wall:.2f} ms wall per step; " + ", ".join(f"{k} {v:.2f} ms" for k, v in ranges.items())
        print(head, flush=True)
        print(table, flush=True)
        lines += [head + "\n", "```", table, "```\n"]
        del synth
    if args.audit_epochs:
        audit = AuditConfig()
        nets = [
            build_network(input_shape=data.test.image_shape, num_classes=10, network=network, seed=s, device=device)
            for s in range(audit.num_eval)
        ]
        images = torch.randn(10 * args.ipc, *data.test.image_shape, device=device)
        labels = torch.arange(10, device=device).repeat_interleave(args.ipc)
        generator = torch.Generator(device=device).manual_seed(0)

        def epochs() -> None:
            train_stacked(
                nets, images, labels, epochs=args.audit_epochs, lr=audit.lr, momentum=audit.momentum,
                weight_decay=audit.weight_decay, batch_size=audit.batch_size, dsa=DSAConfig(), generator=generator,
            )

        epochs()
        wall, table, ranges = _profile(epochs, steps=1, device=device, row_limit=args.row_limit)
        head = (
            f"## audit, {audit.num_eval} stacked models: {wall / args.audit_epochs:.2f} ms wall per epoch; "
            f"all kernels {ranges['all kernels'] / args.audit_epochs:.2f} ms per epoch"
        )
        print(head, flush=True)
        print(table, flush=True)
        lines += [head + "\n", "```", table, "```\n"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"profile_{device.type}{args.tag}.md").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
