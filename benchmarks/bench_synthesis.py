"""Speed of the synthesis loop and of the audit, next to a reference-style naive loop.

    python benchmarks/bench_synthesis.py --device cuda --out benchmarks/results

Measures, on the given device and in one run (so the numbers compare as ratios):

(a) seconds per outer iteration of :class:`fdd.distillation.synthesis.DMSynthesizer` for each mode at
    IPC 10 and 50 (median of ``--iterations`` timed iterations after ``--warmup``, with
    a device synchronisation around each);
(b) the same for the naive per-class, per-group loop of ``naive_reference.py``;
(c) the time to evaluate one synthetic set with ``--num-eval`` models of ``--epochs``
    epochs: stacked (``train_stacked``), optionally replayed as a CUDA graph per epoch
    (``--audit-variants``), and one by one.

Writes ``bench_<device>.csv`` and ``bench_<device>.md`` with the machine and versions.
Needs torch, torchvision, numpy, pandas (and pydantic for fdd.config).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from naive_reference import NaiveDM

from fdd.config import AuditConfig, NetworkConfig, SynthesisConfig
from fdd.datasets.colored import build_colored
from fdd.datasets.sources import load_raw
from fdd.distillation.synthesis import DMSynthesizer
from fdd.fairness.audit import audit_synthetic


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, *, warmup: int, iterations: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def machine(device: torch.device) -> str:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return f"{gpu}; torch {torch.__version__}; CUDA {torch.version.cuda}; Python {platform.python_version()}; {torch.get_num_threads()} CPU threads"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data-root", default="data/raw")
    parser.add_argument("--ipcs", default="10,50")
    parser.add_argument("--modes", default="vanilla,fairdd,cobra")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch-real", type=int, default=600)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--naive-iterations", type=int, default=10)
    parser.add_argument("--num-eval", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1500)
    parser.add_argument("--skip-naive-eval", action="store_true", help="skip the one-by-one audit")
    parser.add_argument(
        "--audit-variants",
        default="stacked,stacked+graph",
        help="comma list of audit variants: stacked, stacked+graph (each epoch replayed as a CUDA graph)",
    )
    parser.add_argument(
        "--variants",
        default="fp32",
        help="comma list of fp32, bf16, cl (channels-last), compile, graph (synthesis.cuda_graph: each DM iteration as one CUDA graph), and +-joins",
    )
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--skip-audit", action="store_true")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    raw = load_raw("mnist", root=args.data_root, download=False)
    train = build_colored(raw, bias="foreground", seed=0).train
    test = build_colored(raw, bias="foreground", seed=0).test
    network = NetworkConfig(width=args.width)
    rows = []
    for ipc in [int(x) for x in args.ipcs.split(",")]:
        for mode in args.modes.split(","):
            naive_s = float("nan")
            if not args.skip_naive:
                naive = NaiveDM(
                    train,
                    mode=mode,
                    ipc=ipc,
                    batch_real=args.batch_real,
                    width=args.width,
                    warmup_epochs=SynthesisConfig(ipc=ipc).resolved_warmup_epochs(),
                    device=device,
                )
                naive_s = statistics.median(
                    time_steps(naive.step, warmup=2, iterations=args.naive_iterations, device=device)
                )
                del naive
            for variant in args.variants.split(","):
                parts = set(variant.split("+"))
                config = SynthesisConfig(
                    modes=(mode,),
                    ipc=ipc,
                    iterations=1,
                    batch_real=args.batch_real,
                    precision="bf16" if "bf16" in parts else "fp32",
                    channels_last="cl" in parts,
                    compile="compile" in parts,
                    cuda_graph="graph" in parts,
                )
                fast = DMSynthesizer(train, mode=mode, config=config, network=network, seed=0, device=device)
                warm = args.warmup + (3 if "compile" in parts else 0)
                times = time_steps(fast.step, warmup=warm, iterations=args.iterations, device=device)
                row = {
                    "what": "synthesis iteration",
                    "variant": variant,
                    "ipc": ipc,
                    "mode": mode,
                    "fdd_s": statistics.median(times),
                    "naive_s": naive_s,
                }
                row["speedup"] = row["naive_s"] / row["fdd_s"]
                rows.append(row)
                print(row, flush=True)
                if ipc == 10 and mode == "cobra":
                    synthetic = fast.synthetic_set()
    audits = [] if args.skip_audit else [v for v in args.audit_variants.split(",") if v]
    if not args.skip_audit and not args.skip_naive_eval:
        audits.append("one-by-one")
    for variant in audits:
        parts = set(variant.split("+"))
        audit = AuditConfig(
            num_eval=args.num_eval,
            epochs=args.epochs,
            stack_models="one-by-one" not in parts,
            cuda_graph="graph" in parts,
        )
        sync(device)
        start = time.perf_counter()
        audit_synthetic(synthetic, test, config=audit, network=network, device=device)
        sync(device)
        rows.append(
            {
                "what": f"audit: {args.num_eval} models x {args.epochs} epochs + test",
                "variant": variant,
                "ipc": 10,
                "mode": "cobra",
                "fdd_s": time.perf_counter() - start,
            }
        )
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = device.type
    table.to_csv(out / f"bench_{tag}.csv", index=False)
    (out / f"bench_{tag}.md").write_text(
        f"# Synthesis and audit speed\n\nMachine: {machine(device)}\n\n"
        f"ConvNet width {args.width}, batch_real {args.batch_real} per class, C-MNIST (foreground); "
        f"median of {args.iterations} iterations (naive: {args.naive_iterations}) after warm-up, synchronised.\n\n"
        + table.to_markdown(index=False, floatfmt=".4f")
        + "\n"
    )
    print(table.to_markdown(index=False, floatfmt=".4f"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
