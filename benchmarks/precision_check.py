"""Whether bf16 moves the metrics: one cell's sweep records at fp32 and at bf16, side by side.

    python benchmarks/precision_check.py

Reads the records of ``fdd sweep --preset paper`` run twice on the same machine and day
(C-MNIST foreground, IPC 10, cobra, seeds 0-2), the two at once on one GPU:

    fdd sweep --preset paper --set "sweep.compute_only={datasets: [cmnist-fg], ipcs: [10], modes: [cobra]}" \\
        --set "sweep.datasets=[cmnist-fg]" --set "sweep.ipcs=[10]" --set "sweep.modes=[cobra]" \\
        --set sweep.paper_table=null --set sweep.records=benchmarks/results/precision_check_fp32/cells
    (the same with --set synthesis.precision=bf16 --set audit.precision=bf16
     --set sweep.records=benchmarks/results/precision_check_bf16/cells)

Writes ``benchmarks/results/precision_check.{csv,md}``: per precision the mean and sample std
over synthesis seeds (each seed: the mean of its 5 evaluations); the per-seed differences
bf16 - fp32 with a 95% t-interval of their mean, against issue 16's bounds (0.5 points of
accuracy, 2 of DEO_M); and, as the noise floor, the same differences between the fp32 rerun
and the paper table's fp32 records of the same cell (same settings and fingerprint, another
day and commit), when those exist.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pandas as pd
from scipy import stats

RESULTS = Path(__file__).resolve().parent / "results"
METRICS = ("accuracy", "deo_m", "deo_a", "worst_group_accuracy")
#: issue 16: bf16 keeps accuracy within 0.5 points and DEO_M within 2 of the fp32 result
BOUNDS = {"accuracy": 0.5, "deo_m": 2.0}
CELL = {"dataset": "cmnist-fg", "ipc": 10, "mode": "cobra"}
PATTERN = "cmnist-fg-ipc10-dm-cobra-seed*.json"


def read_cells(folder: Path, label: str, precision: str) -> pd.DataFrame:
    """One row per record of :data:`CELL` in ``folder``: seed, the metrics, seconds, commit, device."""
    rows = []
    for path in sorted(folder.glob(PATTERN)):  # the cell's own records (not the frontier's lambda cells)
        record = json.loads(path.read_text())
        row, config = record["row"], record["config"]
        if any(row.get(k) != v for k, v in CELL.items()):
            continue
        made = (
            config["synthesis"].get("precision", "fp32"),
            config["audit"].get("precision", "fp32"),
        )  # fp32 before the key
        if made != (precision, precision):
            raise ValueError(f"{path} was made at another precision than {precision}")
        rows.append(
            {
                "run": label,
                "seed": row["seed"],
                **{m: row[m] for m in METRICS},
                "seconds": row["seconds"],
                "fdd_commit": record["fdd_commit"],
                "device": row["device_name"],
                "day": row.get("finished", "")[:10] or "not recorded",
            }
        )
    cells = pd.DataFrame(rows)
    if cells.empty:
        raise FileNotFoundError(f"no records of {CELL} in {folder}")
    if cells["seed"].duplicated().any():
        raise ValueError(f"{folder} holds two records of one seed")
    return cells


def paired(a: pd.DataFrame, b: pd.DataFrame, label: str) -> dict:
    """Per-seed differences ``a - b``: mean, sample std and the 95% t-interval of the mean."""
    left, right = a.set_index("seed"), b.set_index("seed")
    seeds = sorted(set(left.index) & set(right.index))
    row: dict = {"run": label, "seeds": len(seeds)}
    verdicts = []
    for m in METRICS:
        d = (left.loc[seeds, m] - right.loc[seeds, m]).to_numpy(float)
        mean = float(d.mean())
        std = float(d.std(ddof=1)) if len(d) > 1 else math.nan
        half = float(stats.t.ppf(0.975, len(d) - 1) * std / math.sqrt(len(d))) if len(d) > 1 else math.nan
        row[f"{m}_mean"], row[f"{m}_std"], row[f"{m}_ci95"] = mean, std, half
        if m in BOUNDS:
            inside = "mean within" if abs(mean) <= BOUNDS[m] else "mean OUTSIDE"
            shown = "interval within" if abs(mean) + half <= BOUNDS[m] else "interval not within"
            verdicts.append(f"{m} {mean:+.2f} +/- {half:.2f}: {inside} {BOUNDS[m]}, {shown}")
    row["verdict"] = "; ".join(verdicts)
    return row


def summary(runs: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Mean and sample std over seeds per run, then the paired rows."""
    out = []
    for label, part in runs.items():
        row: dict = {"run": label, "seeds": len(part)}
        for m in METRICS:
            row[f"{m}_mean"], row[f"{m}_std"] = part[m].mean(), part[m].std(ddof=1)
        row["seconds_mean"] = part["seconds"].mean()
        for key in ("fdd_commit", "device", "day"):
            row[key] = ",".join(sorted(set(part[key])))
        out.append(row)
    out.append(paired(runs["bf16"], runs["fp32"], "bf16 - fp32 (paired, same day)"))
    if "fp32, earlier" in runs:
        out.append(paired(runs["fp32"], runs["fp32, earlier"], "fp32 - fp32 earlier (paired: rerun noise)"))
    return pd.DataFrame(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", type=Path, default=RESULTS / "precision_check_fp32/cells")
    parser.add_argument("--bf16", type=Path, default=RESULTS / "precision_check_bf16/cells")
    parser.add_argument(
        "--earlier", type=Path, default=RESULTS / "paper_table/cells", help="fp32 records of another day"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "precision_check.csv")
    args = parser.parse_args()
    runs = {"fp32": read_cells(args.fp32, "fp32", "fp32"), "bf16": read_cells(args.bf16, "bf16", "bf16")}
    if args.earlier.is_dir():
        runs["fp32, earlier"] = read_cells(args.earlier, "fp32, earlier", "fp32")
    table = summary(runs)
    table.to_csv(args.out, index=False, float_format="%.4f")
    cells = pd.concat(runs.values(), ignore_index=True)
    per_seed = cells.pivot(index="seed", columns="run", values=["accuracy", "deo_m"]).round(2)
    per_seed.columns = [f"{m} {run}" for m, run in per_seed.columns]
    markdown = "\n\n".join(
        [
            "# bf16 against fp32: C-MNIST foreground, IPC 10, cobra (`fdd sweep --preset paper`)",
            "Mean and sample std over synthesis seeds (each seed: the mean of its 5 evaluations), in %. "
            "bf16: `synthesis.precision` and `audit.precision` bf16 (bf16 activations, fp32 statistics, "
            "weights, losses and updates); both audits ran without `audit.compile`. The fp32 and bf16 sweeps "
            "ran at once on one GPU, so `seconds_mean` is not a speed figure (README.md, 'Speed switches', "
            "has those). Paired rows: mean, sample std and 95% t-interval half-width (`_ci95`) of the per-seed "
            "differences. Bounds (issue 16): 0.5 points of accuracy, 2 of DEO_M. 'fp32, earlier': the paper "
            "table's records of this cell (same settings, another day and commit), for the rerun noise.",
            table.round(3).to_markdown(index=False),
            "## Per seed",
            per_seed.to_markdown(),
        ]
    )
    args.out.with_suffix(".md").write_text(markdown + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
