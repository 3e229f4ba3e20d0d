"""fdd against the public COBRA reference code, from timings measured on the same GPU machine.

Inputs (``benchmarks/results/speed_vs_reference_inputs/``):

* ``reference_times_<device>.csv``: what ``benchmarks/reference/time_reference.sh`` measured
  on the reference (``what,ipc,mode,reference_s``; ``iteration`` rows are the mean seconds per
  outer iteration, ``evaluation`` one 1500-epoch evaluation of an IPC 10 set).
* ``fdd_cell_times_<device>.csv``: fdd's sweep cells of the same session (``fdd sweep --preset
  paper``), one row per cell: ``iteration_s`` is the mean over the cell's 2600 iterations
  (the first eager, compile and capture iterations included), ``evaluation_s`` the cell's
  time minus its synthesis (5 evaluations of 1500 epochs, the test passes and the audit
  stage's own overhead: an upper bound on the evaluations).

Output: ``speed_vs_reference.csv`` (``what,ipc,mode,fdd_s,reference_s,ratio,device,commit``)
and ``speed_vs_reference.md``. fdd's figure is the median over its cells of a (what, ipc,
mode); the reference's evaluation of 5 models is 5 times its one measured evaluation, since
it trains them one after another.

    python benchmarks/speed_vs_reference.py --device-tag h200
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"
NUM_EVAL = 5


def build(reference: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """One row per (what, ipc, mode) measured on both sides."""
    rows = []
    for (ipc, mode), part in cells.groupby(["ipc", "mode"]):
        device, commit = part["device"].iloc[0], ",".join(sorted(set(part["commit"].astype(str))))
        ref = reference[(reference["what"] == "iteration") & (reference["ipc"] == ipc) & (reference["mode"] == mode)]
        if len(ref):
            fdd_s = float(part["iteration_s"].median())
            rows.append(("iteration", ipc, mode, fdd_s, float(ref["reference_s"].iloc[0]), device, commit))
        ref_eval = reference[(reference["what"] == "evaluation") & (reference["ipc"] == ipc)]
        if len(ref_eval):
            fdd_s = float(part["evaluation_s"].median())
            rows.append(
                ("evaluation", ipc, mode, fdd_s, NUM_EVAL * float(ref_eval["reference_s"].iloc[0]), device, commit)
            )
    table = pd.DataFrame(rows, columns=["what", "ipc", "mode", "fdd_s", "reference_s", "device", "commit"])
    table.insert(5, "ratio", table["reference_s"] / table["fdd_s"])
    return table.sort_values(["what", "ipc", "mode"], ascending=[False, True, True]).reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device-tag", default="h200", help="suffix of the input files (default: h200)")
    args = parser.parse_args()
    inputs = RESULTS / "speed_vs_reference_inputs"
    reference = pd.read_csv(inputs / f"reference_times_{args.device_tag}.csv")
    cells = pd.read_csv(inputs / f"fdd_cell_times_{args.device_tag}.csv")
    table = build(reference, cells)
    table.to_csv(RESULTS / "speed_vs_reference.csv", index=False, float_format="%.4f")
    markdown = (
        "\n\n".join(
            [
                "# fdd against the COBRA reference code (same GPU machine, same session)",
                "Seconds per DM outer iteration (`iteration`) and for 5 evaluations of 1500 epochs on the synthetic "
                "set (`evaluation`); ratio = reference / fdd. fdd: median over its sweep cells "
                f"(`{inputs.name}/fdd_cell_times_{args.device_tag}.csv`); reference: "
                f"`{inputs.name}/reference_times_{args.device_tag}.csv` (its evaluation row is 5 x one measured "
                "evaluation). See `benchmarks/speed_vs_reference.py` for what each number includes.",
                table.round(4).to_markdown(index=False),
            ]
        )
        + "\n"
    )
    (RESULTS / "speed_vs_reference.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
