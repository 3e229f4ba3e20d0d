"""Collect benchmarks/results/reproduction/*.json into one table next to docs/method.md's numbers.

python benchmarks/summarize_reproduction.py > benchmarks/results/reproduction.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

# docs/method.md section 5 (pre-publication runs; C-MNIST FG IPC 10 cobra: the measured check)
REFERENCE = {
    ("cmnist", "foreground", 10): {
        "vanilla": "25.8 / 100 / 99.9",
        "fairdd": "94.4 / 17.8 / 8.0",
        "cobra": "94.62 / 14.30 / 7.41 (measured)",
    },
    ("cmnist", "foreground", 50): {
        "vanilla": "56.7 / 100 / 90.5",
        "fairdd": "96.3 / 9.8 / 5.5",
        "cobra": "96.7 / 9.3 / 5.4",
    },
    ("cmnist", "background", 10): {
        "vanilla": "23.5 / 100 / 99.9",
        "fairdd": "94.7 / 16.0 / 7.4",
        "cobra": "94.5 / 12.6 / 6.7",
    },
    ("cfmnist", "foreground", 10): {
        "vanilla": "33.2 / 100 / 99.2",
        "fairdd": "76.2 / 29.3 / 17.7",
        "cobra": "76.2 / 27.2 / 16.9",
    },
}
ORDER = {"vanilla": 0, "fairdd": 1, "cobra": 2}


def main() -> int:
    folder = Path(__file__).resolve().parent / "results" / "reproduction"
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    rows = []
    for r in sorted(
        records,
        key=lambda r: (
            r["dataset"],
            r["bias"] != "foreground",
            r.get("shading", "binary"),
            r["ipc"],
            ORDER[r["mode"]],
            r["iterations"],
        ),
    ):
        key = (r["dataset"], r["bias"], r["ipc"])
        rows.append(
            {
                "dataset": f"{r['dataset']} {'FG' if r['bias'] == 'foreground' else 'BG'}"
                + (" intensity" if r.get("shading", "binary") == "intensity" else ""),
                "IPC": r["ipc"],
                "mode": r["mode"],
                "schedule": f"{r['iterations']} x {r['batch_real']}",
                "device": r["device"].replace("NVIDIA ", "").split(" 80GB")[0],
                "fdd Acc / DEO_M / DEO_A": (
                    f"{r['accuracy_mean']:.2f}±{r['accuracy_std']:.2f} / {r['deo_m_mean']:.2f}±{r['deo_m_std']:.2f} / "
                    f"{r['deo_a_mean']:.2f}±{r['deo_a_std']:.2f}"
                ),
                "reference": REFERENCE.get(key, {}).get(r["mode"], "-"),
                "s/iteration": f"{r['s_per_iteration']:.4f}",
                "audit s (5 models)": f"{r['audit_s']:.1f}",
            }
        )
    devices = sorted({r["device"] + ", torch " + r["torch"] for r in records})  # per row in the table
    print("# Full-length reproduction (DM backbone, ConvNet-3 width 128)\n")
    print(
        f"Machine: {'; '.join(devices)}. Schedule (iterations x batch_real): 2600 x 600 unless the row says otherwise; init real, DSA, "
        "5 evaluations of 1500 epochs (stacked), seed 0, `--compile`. s/iteration includes compilation "
        "and progress logging. Code versions: the C-MNIST FG IPC 10 cobra row ran on 2026-11-27 with the "
        "whole iteration replayed as one CUDA graph and the reshape-mean pooling (H100); the C-MNIST FG IPC 50 "
        "cobra row (H200) and the C-FMNIST `intensity` rows (H100) ran with only the cobra warm-up captured; the "
        "other H100 rows ran before the DSA pre-drawing change, without CUDA graphs. All of them "
        "ran with `--compile` (and `--cuda-graph` where graphs existed). Rows without `intensity` binarise the images at 128 as docs/method.md "
        "states; `intensity` scales the colour by the grey level, as the public C-FMNIST builder of the "
        "FairDD line of work does (`data.shading`).\n"
    )
    print(pd.DataFrame(rows).to_markdown(index=False))
    print(
        "\nC-MNIST FG IPC 50 vanilla on the COBRA-DM schedule (2600 x 600) is 11.5 points below its reference "
        "accuracy (DEO_M 100 in both). docs/method.md marks the vanilla and FairDD rows as pre-publication runs, and the "
        "public FairDD DM script (zqhang/FairDD, main_DM.py) defaults to 20000 iterations with batch_real 256. On "
        "that schedule (the 20000 x 256 row, H100, 2026-11-27, whole-iteration CUDA graph) vanilla reaches "
        "52.53 +/- 0.72, 4.2 points below the reference instead of 11.5: vanilla starts from real images that are "
        "90% majority colour and drifts from them slowly, so its accuracy depends on the length of the run. "
        "The remaining gap is not explained (one seed; the reference's evaluation protocol may differ)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
