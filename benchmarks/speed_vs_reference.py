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

With ``--fdd-variants CSV`` fdd's side comes from ``benchmarks/speed_variants.py`` instead (steady
state: the median ms per iteration of ``--synthesis-variant``, and the last, already compiled run
of ``--eval-variant`` per IPC), set against the reference's median per iteration
(``iteration_median`` rows, else ``iteration``); an evaluation row is written for every mode timed
at its IPC (evaluating a set costs the same whatever mode distilled it):

    python benchmarks/speed_vs_reference.py --device-tag h200 --fdd-variants OUT/speed_variants.csv \
        --synthesis-variant bf16 --eval-variant loop+compile+bf16 --commit COMMIT
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"
NUM_EVAL = 5


def _table(rows: list[tuple]) -> pd.DataFrame:
    """The output columns from (what, ipc, mode, fdd_s, reference_s, device, commit) rows, with the ratio."""
    table = pd.DataFrame(rows, columns=["what", "ipc", "mode", "fdd_s", "reference_s", "device", "commit"])
    table.insert(5, "ratio", table["reference_s"] / table["fdd_s"])
    return table.sort_values(["what", "ipc", "mode"], ascending=[False, True, True]).reset_index(drop=True)


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
    return _table(rows)


def build_from_variants(
    reference: pd.DataFrame,
    variants: pd.DataFrame,
    *,
    synthesis_variant: str,
    eval_variant: str,
    device: str,
    commit: str,
) -> pd.DataFrame:
    """One row per (what, ipc, mode) from a ``speed_variants.csv`` and the reference's times."""
    ok = variants[variants["status"] == "ok"]
    synth = ok[(ok["kind"] == "synthesis") & (ok["variant"] == synthesis_variant)]
    evals = ok[(ok["kind"] == "eval") & (ok["variant"] == eval_variant)]
    rows = []
    for _, row in synth.iterrows():
        ipc, mode = int(row["ipc"]), str(row["mode"])
        ref = reference[(reference["ipc"] == ipc) & (reference["mode"] == mode)]
        ref = ref[ref["what"] == "iteration_median"] if (ref["what"] == "iteration_median").any() else ref
        ref = ref[ref["what"].isin(["iteration", "iteration_median"])]
        if len(ref):
            fdd_s = float(row["ms_per_iter_median"]) / 1000
            rows.append(("iteration", ipc, mode, fdd_s, float(ref["reference_s"].iloc[0]), device, commit))
    for ipc, part in evals.groupby("ipc"):
        ref_eval = reference[(reference["what"] == "evaluation") & (reference["ipc"] == int(ipc))]
        if not len(ref_eval):
            continue
        fdd_s = float(part["eval_s_measured"].iloc[-1])  # the last run: compiled already
        for mode in sorted(set(synth.loc[synth["ipc"] == ipc, "mode"])) or ["cobra"]:
            rows.append(
                ("evaluation", int(ipc), mode, fdd_s, NUM_EVAL * float(ref_eval["reference_s"].iloc[0]), device, commit)
            )
    return _table(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device-tag", default="h200", help="suffix of the input files (default: h200)")
    parser.add_argument("--fdd-variants", type=Path, default=None, help="a speed_variants.csv for fdd's side")
    parser.add_argument("--synthesis-variant", default="baseline")
    parser.add_argument("--eval-variant", default="loop")
    parser.add_argument("--commit", default="", help="fdd's commit of the speed_variants run")
    parser.add_argument("--device", default="NVIDIA H200", help="the machine of the speed_variants run")
    args = parser.parse_args()
    inputs = RESULTS / "speed_vs_reference_inputs"
    reference = pd.read_csv(inputs / f"reference_times_{args.device_tag}.csv")
    if args.fdd_variants is not None:
        variants = pd.read_csv(args.fdd_variants, keep_default_na=False)
        table = build_from_variants(
            reference,
            variants,
            synthesis_variant=args.synthesis_variant,
            eval_variant=args.eval_variant,
            device=args.device,
            commit=args.commit,
        )
        basis = (
            f"fdd: `{args.fdd_variants.name}` of `benchmarks/speed_variants.py`, synthesis variant "
            f"`{args.synthesis_variant}` (median per iteration), evaluation variant `{args.eval_variant}` (its last, "
            "compiled run); reference: median per iteration"
        )
    else:
        table = build(reference, pd.read_csv(inputs / f"fdd_cell_times_{args.device_tag}.csv"))
        basis = f"fdd: median over its sweep cells (`{inputs.name}/fdd_cell_times_{args.device_tag}.csv`); reference"
    table.to_csv(RESULTS / "speed_vs_reference.csv", index=False, float_format="%.4f")
    markdown = (
        "\n\n".join(
            [
                "# fdd against the COBRA reference code (same GPU machine, same session)",
                "Seconds per DM outer iteration (`iteration`) and for 5 evaluations of 1500 epochs on the synthetic "
                f"set (`evaluation`); ratio = reference / fdd. {basis}: "
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
