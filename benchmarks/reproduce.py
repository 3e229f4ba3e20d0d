"""Full-length reproduction of the COBRA-DM benchmark cells (docs/method.md section 5).

    python benchmarks/reproduce.py --dataset cmnist --bias foreground --ipc 10 --out DIR

Runs the published COBRA-DM schedule for every mode (2600 iterations, 600 real images per
class, init from real images, DSA, ConvNet-3 width 128) and audits each synthetic set with
5 evaluations of 1500 epochs. Uses fdd directly (torch, torchvision, numpy, pandas and
pydantic; no Prefect or DVC), so it runs on a bare GPU machine. Writes one JSON per cell.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fdd.config import AuditConfig, NetworkConfig, SynthesisConfig
from fdd.datasets.colored import build_colored
from fdd.datasets.containers import SyntheticSet
from fdd.datasets.sources import load_raw
from fdd.distillation.run import SynthesisInterrupted, synthesize
from fdd.fairness.audit import audit_synthetic

RAW = {"cmnist": "mnist", "cfmnist": "fashion_mnist"}
DEFAULT_ITERATIONS, DEFAULT_BATCH_REAL = (
    2600,
    600,
)  # the COBRA-DM schedule (docs/method.md); other schedules get their own file


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(RAW), default="cmnist")
    parser.add_argument("--bias", choices=["foreground", "background"], default="foreground")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--shading", choices=["binary", "intensity"], default="binary")
    parser.add_argument("--modes", default="vanilla,fairdd,cobra")
    parser.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS)
    parser.add_argument("--batch-real", type=int, default=DEFAULT_BATCH_REAL)
    parser.add_argument("--num-eval", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1500)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument(
        "--cuda-graph", action="store_true", help="synthesis.cuda_graph: each DM iteration replayed as one CUDA graph"
    )
    parser.add_argument(
        "--checkpoint-dir",
        default=None,
        help="resumable checkpoints here (written every 100 iterations and on SIGTERM); a rerun continues them",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data-root", default="data/raw")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    raw = load_raw(RAW[args.dataset], root=args.data_root, download=False)
    splits = build_colored(raw, bias=args.bias, seed=0, shading=args.shading)
    network = NetworkConfig(width=args.width)
    audit = AuditConfig(num_eval=args.num_eval, epochs=args.epochs)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for mode in args.modes.split(","):
        config = SynthesisConfig(
            modes=(mode,),
            ipc=args.ipc,
            iterations=args.iterations,
            batch_real=args.batch_real,
            compile=args.compile,
            cuda_graph=args.cuda_graph,
            log_every=max(args.iterations // 5, 1),
            checkpoint_every=100,
        )
        name = f"{args.dataset}_{args.bias}_ipc{args.ipc}_{mode}" + (
            "_intensity" if args.shading == "intensity" else ""
        )
        if (args.iterations, args.batch_real) != (
            DEFAULT_ITERATIONS,
            DEFAULT_BATCH_REAL,
        ):  # keeps the default run's file
            name += f"_{args.iterations}x{args.batch_real}"
        checkpoint = Path(args.checkpoint_dir) / f"{name}.ckpt" if args.checkpoint_dir else None
        saved = Path(args.checkpoint_dir) / f"{name}.synthetic.pt" if args.checkpoint_dir else None
        if saved is not None and saved.exists():  # synthesised by an earlier call: audit only
            synthetic = SyntheticSet.load(saved)
            synth_s, s_per_iteration = float("nan"), float(synthetic.provenance.get("s_per_iteration", "nan"))
            print(f"loaded {saved}", flush=True)
        else:
            start = time.perf_counter()
            try:
                result = synthesize(
                    splits.train,
                    mode=mode,
                    config=config,
                    network=network,
                    seed=args.seed,
                    device=args.device,
                    progress=lambda it, loss, mode=mode: print(
                        f"  {mode} {it}/{args.iterations} loss {loss:.3f}", flush=True
                    ),
                    checkpoint=checkpoint,
                )
            except SynthesisInterrupted as stop:
                print(f"interrupted, checkpoint kept: {stop}", flush=True)
                return 0
            synth_s, s_per_iteration = time.perf_counter() - start, result.seconds_per_iteration
            synthetic = result.synthetic
            if saved is not None:  # an audit cut short by a time limit can resume from here
                synthetic.provenance["s_per_iteration"] = s_per_iteration
                synthetic.save(saved)
        start = time.perf_counter()
        audited = audit_synthetic(synthetic, splits.test, config=audit, network=network, device=args.device)
        audit_s = time.perf_counter() - start
        s = audited.summary
        record = {
            "dataset": args.dataset,
            "bias": args.bias,
            "shading": args.shading,
            "ipc": args.ipc,
            "mode": mode,
            "iterations": args.iterations,
            "batch_real": args.batch_real,
            "num_eval": args.num_eval,
            "epochs": args.epochs,
            "seed": args.seed,
            "device": device_name,
            "torch": torch.__version__,
            "synthesis_s": synth_s,
            "s_per_iteration": s_per_iteration,
            "audit_s": audit_s,
            **{f"{k}_mean": s[k]["mean"] for k in ("accuracy", "deo_m", "deo_a", "worst_group_accuracy")},
            **{f"{k}_std": s[k]["std"] for k in ("accuracy", "deo_m", "deo_a", "worst_group_accuracy")},
        }
        (out / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
        print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
