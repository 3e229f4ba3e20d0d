"""Mean vs distributional alignment, and group-covering initialisation (issue #5, parts 2-4).

    python benchmarks/alignment.py --device cuda \\
        --datasets cmnist,cfmnist --variants cobra:real,cobra-w2:real,cobra-bures:real,cobra:barycenter,cobra-w2:barycenter \\
        --iterations 2600 --num-eval 5 --eval-epochs 1500

Every variant ``MODE:INIT`` is distilled with the DM backbone (ConvNet-3 width 128, batch 600
per class, DSA, the COBRA-DM schedule unless overridden) on the foreground-coloured dataset at
the given IPC, then audited with ``--num-eval`` evaluations of ``--eval-epochs`` epochs.
``--flip`` / ``--hide`` perturb the training groups (fdd/datasets/group_noise.py) for the robustness
study. Uses fdd directly (torch, torchvision, numpy, pandas, pydantic and POT; no Prefect or
DVC), reads MNIST / Fashion-MNIST from ``--data-root`` (no download by default).

Writes ``<out>/alignment_<device>.md`` (a table: accuracy, DEO_M, DEO_A, worst-group accuracy
as mean +/- std over the evaluations, seconds per iteration, group coverage of the
initial images) and ``alignment_<device>.csv``; each row is also printed as JSON when done,
and the files are rewritten after every variant, so a run cut short keeps what it finished.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fdd.config import MODES, AuditConfig, NetworkConfig, SynthesisConfig
from fdd.datasets.colored import build_colored
from fdd.datasets.containers import stratified_subset
from fdd.datasets.group_noise import perturb_groups
from fdd.datasets.sources import load_raw
from fdd.distillation.run import synthesize
from fdd.distillation.synthesis import DMSynthesizer
from fdd.fairness.audit import audit_synthetic
from fdd.files import atomic_write

RAW = {"cmnist": "mnist", "cfmnist": "fashion_mnist"}
INITS = ("real", "noise", "stratified", "barycenter")
METRICS = ("accuracy", "deo_m", "deo_a", "worst_group_accuracy")


def parse_variants(text: str) -> list[tuple[str, str]]:
    variants = []
    for item in text.split(","):
        mode, _, init = item.strip().partition(":")
        init = init or "real"
        if mode not in MODES or init not in INITS:
            raise SystemExit(f"--variants: {item!r} must be MODE[:INIT] with MODE in {MODES} and INIT in {INITS}")
        variants.append((mode, init))
    return variants


def init_coverage(
    train, *, mode: str, config: SynthesisConfig, network: NetworkConfig, seed: int, device: str
) -> float:
    """Mean number of distinct groups among each class's initial synthetic images."""
    loop = DMSynthesizer(
        train, mode=mode, config=config.model_copy(update={"iterations": 0}), network=network, seed=seed, device=device
    )
    real = train.normalized(device).flatten(1)
    init = loop.syn_images.detach().flatten(1)
    nearest = torch.cdist(init, real, compute_mode="donot_use_mm_for_euclid_dist").argmin(dim=1).cpu()
    groups = train.groups[nearest].view(train.num_classes, config.ipc)
    return float(sum(len(set(row.tolist()) - {-1}) for row in groups) / train.num_classes)


def to_markdown(frame: pd.DataFrame, header: str) -> str:
    lines = [header, ""]
    cols = [
        "dataset",
        "mode",
        "init",
        "flip",
        "hide",
        "accuracy",
        "deo_m",
        "deo_a",
        "worst_group_accuracy",
        "s_per_iteration",
        "init_groups_per_class",
    ]
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "---|" * len(cols))
    for _, row in frame.iterrows():
        cells = []
        for c in cols:
            if c in METRICS:
                cells.append(f"{row[c + '_mean']:.2f} +/- {row[c + '_std']:.2f}")
            elif c == "s_per_iteration":
                cells.append(f"{row[c]:.3f}")
            elif c == "init_groups_per_class":
                cells.append(f"{row[c]:.1f}")
            else:
                cells.append(str(row[c]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="cmnist,cfmnist")
    parser.add_argument("--bias", choices=["foreground", "background"], default="foreground")
    parser.add_argument(
        "--shading",
        choices=["binary", "intensity"],
        default="binary",
        help="colouring of the digits/garments (data.shading; flows/presets/cfmnist.yaml uses intensity)",
    )
    parser.add_argument(
        "--variants", default="cobra:real,cobra-w2:real,cobra-bures:real,cobra:barycenter,cobra-w2:barycenter"
    )
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=2600)
    parser.add_argument("--batch-real", type=int, default=600)
    parser.add_argument("--warmup-epochs", type=int, default=None)
    parser.add_argument("--w2-solver", choices=["emd", "sinkhorn"], default="emd")
    parser.add_argument("--w2-reg", type=float, default=0.05)
    parser.add_argument("--w2-reduction", choices=["sum", "mean"], default="sum")
    parser.add_argument("--lr-img", type=float, default=1.0)
    parser.add_argument("--num-eval", type=int, default=5)
    parser.add_argument("--eval-epochs", type=int, default=1500)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--compile", action="store_true", help="torch.compile the embedding network (GPU)")
    parser.add_argument("--test-limit", type=int, default=None, help="stratified test subset (quick runs)")
    parser.add_argument("--flip", type=float, default=0.0, help="share of train group labels flipped")
    parser.add_argument("--hide", type=float, default=0.0, help="share of train group labels hidden (-1)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data-root", default="data/raw")
    parser.add_argument("--download", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--tag", default=None, help="file name suffix; default: the device name")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = parse_variants(args.variants)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else (platform.processor() or "cpu")
    tag = args.tag or re.sub(r"[^A-Za-z0-9]+", "_", device_name).strip("_").lower()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    network = NetworkConfig(width=args.width)
    audit = AuditConfig(num_eval=args.num_eval, epochs=args.eval_epochs)
    rows: list[dict] = []
    for dataset in args.datasets.split(","):
        raw = load_raw(RAW[dataset], root=args.data_root, download=args.download)
        splits = build_colored(raw, bias=args.bias, seed=0, shading=args.shading)
        train, test = splits.train, splits.test
        if args.test_limit is not None and args.test_limit < len(test):
            test = stratified_subset(test, size=args.test_limit, seed=0)
        if args.flip or args.hide:
            train = perturb_groups(train, flip_fraction=args.flip, hide_fraction=args.hide, seed=args.seed).data
        for mode, init in variants:
            config = SynthesisConfig(
                modes=(mode,),
                ipc=args.ipc,
                iterations=args.iterations,
                batch_real=args.batch_real,
                init=init,
                warmup_epochs=args.warmup_epochs,
                w2_solver=args.w2_solver,
                w2_reg=args.w2_reg,
                w2_reduction=args.w2_reduction,
                lr_img=args.lr_img,
                log_every=max(args.iterations // 5, 1),
                checkpoint_every=0,
                compile=args.compile,
            )
            coverage = init_coverage(
                train, mode=mode, config=config, network=network, seed=args.seed, device=args.device
            )
            start = time.perf_counter()
            result = synthesize(
                train,
                mode=mode,
                config=config,
                network=network,
                seed=args.seed,
                device=args.device,
                progress=lambda it, loss, d=dataset, m=mode, i=init: print(
                    f"  {d} {m}:{i} {it}/{args.iterations} loss {loss:.3f}", flush=True
                ),
            )
            synth_s = time.perf_counter() - start
            start = time.perf_counter()
            audited = audit_synthetic(result.synthetic, test, config=audit, network=network, device=args.device)
            s = audited.summary
            row = {
                "dataset": dataset,
                "bias": args.bias,
                "ipc": args.ipc,
                "mode": mode,
                "init": init,
                "flip": args.flip,
                "hide": args.hide,
                "iterations": args.iterations,
                "batch_real": args.batch_real,
                "w2_solver": args.w2_solver,
                "w2_reduction": args.w2_reduction,
                "lr_img": args.lr_img,
                "num_eval": args.num_eval,
                "eval_epochs": args.eval_epochs,
                "width": args.width,
                "seed": args.seed,
                "device": device_name,
                "torch": torch.__version__,
                "synthesis_s": synth_s,
                "s_per_iteration": result.seconds_per_iteration,
                "audit_s": time.perf_counter() - start,
                "init_groups_per_class": coverage,
                **{f"{k}_mean": s[k]["mean"] for k in METRICS},
                **{f"{k}_std": s[k]["std"] for k in METRICS},
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            frame = pd.DataFrame(rows)
            header = (
                f"# Alignment benchmark ({device_name}, torch {torch.__version__})\n\n"
                f"{args.bias} bias, IPC {args.ipc}, {args.iterations} iterations, batch_real {args.batch_real}, "
                f"ConvNet width {args.width}, lr_img {args.lr_img}, w2_solver {args.w2_solver}, "
                f"w2_reduction {args.w2_reduction}; audit: {args.num_eval} x {args.eval_epochs} "
                f"epochs; test images: {len(test)}; group noise: flip {args.flip}, hide {args.hide}. "
                "Metrics in %, mean +/- std over the evaluations. init_groups_per_class: distinct groups among "
                "each class's initial images (mean over classes).\n\n"
                f"Command: `python benchmarks/alignment.py {' '.join(sys.argv[1:])}`"
            )
            atomic_write(out / f"alignment_{tag}.csv", lambda h, f=frame: h.write(f.to_csv(index=False).encode()))
            atomic_write(out / f"alignment_{tag}.md", lambda h, f=frame, t=header: h.write(to_markdown(f, t).encode()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
