"""Search a short CPU schedule: synthesize and audit variants in one process, CPU and wall time per phase.

    PYTHONPATH=. python benchmarks/quick_schedule.py data/prepared --threads 1 --variants '[
      {"mode": "cobra", "syn": {"init": "barycenter", "iterations": 30, "lr_img": 0.2, "batch_real": 32,
                                "warmup_epochs": 2}, "epochs": [120, 150]},
      {"mode": "vanilla", "syn": {"init": "barycenter", "iterations": 30, "lr_img": 0.2, "batch_real": 32},
       "epochs": [150]}]'

``data/prepared`` is the ingest stage's output of a workspace (``train.pt``, ``test.pt``). Each
variant is one mode, its ``synthesis`` keys over the quick schedule's (IPC 10, DM, DSA, momentum 0.5),
an optional ConvNet ``width`` (default 32) and the audit ``epochs`` to evaluate it with (one
evaluation each, seed 0, the full test split). Prints one JSON line per (variant, epochs): accuracy,
DEO_M, DEO_A, seconds of synthesis and of audit as wall and as CPU time of this process (on a
shared machine, CPU time is the figure to compare) and the 1-minute load average.
Uses fdd only (no Prefect, no DVC). ``benchmarks/results/first_run_cpu.md`` holds what it measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fdd.config import AuditConfig, NetworkConfig, SynthesisConfig
from fdd.datasets.containers import GroupedImages
from fdd.distillation.run import synthesize
from fdd.fairness.audit import audit_synthetic

BASE = dict(
    backbone="dm",
    ipc=10,
    iterations=30,
    batch_real=32,
    lr_img=0.2,
    momentum=0.5,
    init="barycenter",
    dsa=True,
    warmup_epochs=2,
    log_every=10,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prepared", help="folder with the ingest stage's train.pt and test.pt")
    parser.add_argument("--variants", required=True, help="JSON list of variants (see the module docstring)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train = GroupedImages.load(Path(args.prepared) / "train.pt")
    test = GroupedImages.load(Path(args.prepared) / "test.pt")
    for variant in json.loads(args.variants):
        synthesis = SynthesisConfig(**{**BASE, **variant.get("syn", {}), "modes": [variant["mode"]]})
        network = NetworkConfig(width=variant.get("width", 32))
        wall, cpu = time.perf_counter(), time.process_time()
        result = synthesize(train, mode=variant["mode"], config=synthesis, network=network, seed=0, device="cpu")
        syn_wall, syn_cpu = time.perf_counter() - wall, time.process_time() - cpu
        for epochs in variant.get("epochs", [150]):
            wall, cpu = time.perf_counter(), time.process_time()
            audit = audit_synthetic(
                result.synthetic, test, config=AuditConfig(num_eval=1, epochs=epochs), network=network, device="cpu"
            )
            summary = audit.summary
            print(
                json.dumps(
                    {
                        **variant,
                        "epochs": epochs,
                        "accuracy": round(summary["accuracy"]["mean"], 2),
                        "deo_m": round(summary["deo_m"]["mean"], 2),
                        "deo_a": round(summary["deo_a"]["mean"], 2),
                        "synthesis_wall_s": round(syn_wall, 1),
                        "synthesis_cpu_s": round(syn_cpu, 1),
                        "audit_wall_s": round(time.perf_counter() - wall, 1),
                        "audit_cpu_s": round(time.process_time() - cpu, 1),
                        "load": Path("/proc/loadavg").read_text().split()[0]
                        if Path("/proc/loadavg").exists()
                        else None,
                    }
                ),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
