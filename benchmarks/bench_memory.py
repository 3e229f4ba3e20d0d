"""Host and GPU memory over a long synthesis run and over a sweep of many cells.

    python benchmarks/bench_memory.py --device cpu --iterations 300 --cells 8

(a) runs one synthesis for ``--iterations`` iterations and samples the process's resident
memory (and CUDA allocated/reserved memory) every ``--every`` iterations;
(b) runs ``--cells`` small synthesize+audit cells one after the other in one process and
samples memory after each. Writes ``memory_<device>.csv`` and a markdown summary with the
growth between the first and the last quarter of the samples.
"""

from __future__ import annotations

import argparse
import gc
import platform
import resource
import sys
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fdd.config import AuditConfig, NetworkConfig, SynthesisConfig
from fdd.datasets.colored import build_colored
from fdd.datasets.sources import load_raw
from fdd.distillation.synthesis import DMSynthesizer
from fdd.fairness.audit import audit_synthetic


def rss_mib() -> float:
    """Current resident set size of this process (Linux /proc), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gpu_mib(device: torch.device) -> tuple[float, float]:
    if device.type != "cuda":
        return 0.0, 0.0
    return torch.cuda.memory_allocated(device) / 2**20, torch.cuda.memory_reserved(device) / 2**20


def growth(values: list[float]) -> float:
    q = max(len(values) // 4, 1)
    return sum(values[-q:]) / q - sum(values[:q]) / q


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--cells", type=int, default=8)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch-real", type=int, default=64)
    parser.add_argument("--mode", default="cobra")
    parser.add_argument("--data-root", default="data/raw")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    device = torch.device(args.device)
    splits = build_colored(load_raw("mnist", root=args.data_root, download=False), bias="foreground", seed=0)
    network = NetworkConfig(width=args.width)
    rows = []
    config = SynthesisConfig(ipc=10, iterations=args.iterations, batch_real=args.batch_real, warmup_epochs=5)
    loop = DMSynthesizer(splits.train, mode=args.mode, config=config, network=network, seed=0, device=device)
    for it in range(1, args.iterations + 1):
        loop.step()
        if it % args.every == 0:
            rows.append(
                {
                    "phase": "long run",
                    "step": it,
                    "rss_mib": rss_mib(),
                    **dict(zip(("gpu_alloc_mib", "gpu_reserved_mib"), gpu_mib(device))),
                }
            )
    del loop
    small = SynthesisConfig(ipc=10, iterations=5, batch_real=args.batch_real, warmup_epochs=2)
    for cell in range(args.cells):
        result_loop = DMSynthesizer(
            splits.train, mode=args.mode, config=small, network=network, seed=cell, device=device
        )
        for _ in range(small.iterations):
            result_loop.step()
        audit_synthetic(
            result_loop.synthetic_set(),
            splits.test,
            config=AuditConfig(num_eval=2, epochs=5),
            network=network,
            device=device,
        )
        del result_loop
        gc.collect()
        rows.append(
            {
                "phase": "sweep",
                "step": cell + 1,
                "rss_mib": rss_mib(),
                **dict(zip(("gpu_alloc_mib", "gpu_reserved_mib"), gpu_mib(device))),
            }
        )
    table = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / f"memory_{device.type}.csv", index=False)
    summary = []
    for phase, part in table.groupby("phase", sort=False):
        summary.append(
            {
                "phase": phase,
                "samples": len(part),
                "rss first (MiB)": round(part["rss_mib"].iloc[0], 1),
                "rss last (MiB)": round(part["rss_mib"].iloc[-1], 1),
                "rss growth, last vs first quarter (MiB)": round(growth(part["rss_mib"].tolist()), 1),
                "gpu allocated growth (MiB)": round(growth(part["gpu_alloc_mib"].tolist()), 1),
            }
        )
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU"
    text = (
        f"# Memory over iterations and over a sweep\n\nMachine: {machine}; torch {torch.__version__}. "
        f"{args.mode}, ConvNet width {args.width}, batch_real {args.batch_real}, {args.iterations} iterations, "
        f"{args.cells} sweep cells.\n\n" + pd.DataFrame(summary).to_markdown(index=False) + "\n"
    )
    (out / f"memory_{device.type}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
