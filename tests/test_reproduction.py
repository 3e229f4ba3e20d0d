"""The comparison with the published DM table: verdicts, aggregation over seeds, paired test."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

from fdd.report.reproduction import (
    ERR_CELL_COLUMNS,
    PAIRED_COLUMNS,
    PAPER_COLUMNS,
    PUBLISHED_DM,
    paired_comparison,
    paper_table,
    read_reasons,
    verdict,
)


def _cells(
    rows: list[tuple[str, int, float, float]], *, dataset: str = "cmnist", bias: str = "foreground", ipc: int = 10
) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "dataset": dataset,
                "bias": bias,
                "ipc": ipc,
                "mode": mode,
                "seed": seed,
                "accuracy": acc,
                "deo_m": deo,
                "deo_a": deo / 2,
                "suff_m": deo / 4,
            }
            for mode, seed, acc, deo in rows
        ]
    )


def test_published_table_holds_method_md_section_5() -> None:
    assert PUBLISHED_DM[("cmnist", "foreground", 10, "cobra")] == (94.6, 15.7, 7.5)
    assert PUBLISHED_DM[("cfmnist", "background", 50, "fairdd")] == (78.7, 24.3, 14.2)
    assert len(PUBLISHED_DM) == 18 and all(len(v) == 3 for v in PUBLISHED_DM.values())


def test_verdict_tolerances_and_reasons() -> None:
    published = (94.6, 15.7, 7.5)
    assert verdict(94.0, 18.6, 3, published) == "match"  # 0.6 and 2.9 points off
    assert verdict(93.5, 15.7, 3, published) == "acc -1.1 points from published"
    assert verdict(94.6, 19.0, 3, published) == "DEO_M +3.3 points from published"
    assert verdict(90.0, 30.0, 3, published) == "acc -4.6 and DEO_M +14.3 points from published"
    assert verdict(50.0, 50.0, 3, None) == "unpublished"
    # with the seeds' values: is the published value inside their range (a wide spread) or outside it?
    assert (
        verdict(94.6, 19.0, 3, published, deo_m_values=[14.0, 19.0, 24.0])
        == "DEO_M +3.3 (published inside the seeds' 14.0-24.0) points from published"
    )
    assert (
        verdict(93.5, 15.7, 3, published, acc_values=[93.0, 93.5, 94.0], deo_m_values=[15.0, 15.7, 16.4])
        == "acc -1.1 (published outside the seeds' 93.0-94.0) points from published"
    )
    assert verdict(93.5, 15.7, 1, published, acc_values=[93.5]) == "acc -1.1 points from published"  # one seed
    assert verdict(math.nan, math.nan, 0, published) == "not run"


def test_paper_table_aggregates_over_seeds_with_the_sample_std() -> None:
    cells = _cells(
        [("cobra", 0, 94.0, 14.0), ("cobra", 1, 95.0, 16.0), ("cobra", 2, 96.0, 18.0), ("vanilla", 0, 20.0, 100.0)]
    )
    grid = [
        ("cmnist", "foreground", 10, "vanilla"),
        ("cmnist", "foreground", 10, "fairdd"),
        ("cmnist", "foreground", 10, "cobra"),
        ("cmnist", "background", 30, "cobra"),
    ]
    table = paper_table(cells, grid)
    assert list(table.columns) == list(PAPER_COLUMNS)
    rows = table.set_index(["dataset", "bias", "ipc", "mode"])
    cobra = rows.loc[("cmnist", "foreground", 10, "cobra")]
    assert cobra["seeds"] == 3 and cobra["acc_mean"] == pytest.approx(95.0) and cobra["acc_std"] == pytest.approx(1.0)
    assert cobra["deo_m_mean"] == pytest.approx(16.0) and cobra["deo_m_std"] == pytest.approx(2.0)
    assert cobra["deo_a_mean"] == pytest.approx(8.0) and cobra["suff_gap_mean"] == pytest.approx(4.0)
    assert cobra["published_deo_m"] == 15.7 and cobra["verdict"] == "match"
    vanilla = rows.loc[("cmnist", "foreground", 10, "vanilla")]
    assert vanilla["seeds"] == 1 and math.isnan(vanilla["acc_std"])
    assert vanilla["verdict"] == "acc -5.8 points from published"
    assert rows.loc[("cmnist", "foreground", 10, "fairdd"), "verdict"] == "not run"
    assert rows.loc[("cmnist", "foreground", 10, "fairdd"), "seeds"] == 0
    assert rows.loc[("cmnist", "background", 30, "cobra"), "verdict"] == "not run"
    assert list(table["mode"][:3]) == ["vanilla", "fairdd", "cobra"]  # the grid's order


def test_paired_comparison_uses_the_shared_seeds() -> None:
    cells = _cells(
        [
            ("cobra", 0, 95.0, 14.0),
            ("cobra", 1, 96.0, 15.0),
            ("cobra", 2, 97.0, 19.0),
            ("fairdd", 0, 94.0, 16.0),
            ("fairdd", 1, 94.0, 16.0),
            ("fairdd", 2, 94.0, 16.0),
            ("fairdd", 3, 10.0, 90.0),
        ]
    )
    paired = paired_comparison(cells, "cobra", "fairdd")
    assert list(paired.columns) == list(PAIRED_COLUMNS) and len(paired) == 1
    row = paired.iloc[0]
    assert row["seeds"] == 3 and row["pair"] == "cobra - fairdd"
    assert row["acc_diff_mean"] == pytest.approx(2.0) and row["acc_diff_std"] == pytest.approx(1.0)
    # differences 1, 2, 3: t = 2 / (1 / sqrt 3) with 2 degrees of freedom
    assert row["acc_p"] == pytest.approx(2 * stats.t.sf(2 * math.sqrt(3), df=2))
    assert row["deo_m_diff_mean"] == pytest.approx(0.0) and row["deo_m_lower_in"] == "2/3"
    assert paired_comparison(_cells([("cobra", 0, 1.0, 1.0)]), "cobra", "fairdd").empty


def test_missing_cell_columns_are_named() -> None:
    with pytest.raises(ValueError, match="suff_m") as info:
        paper_table(
            pd.DataFrame(
                {"dataset": [], "bias": [], "ipc": [], "mode": [], "seed": [], "accuracy": [], "deo_m": [], "deo_a": []}
            )
        )
    assert str(info.value).startswith(ERR_CELL_COLUMNS.split("{")[0])


def test_reasons_are_appended_to_differing_rows_only(tmp_path: Path) -> None:
    cells = _cells([("vanilla", 0, 20.0, 100.0), ("vanilla", 1, 21.0, 100.0), ("cobra", 0, 94.6, 15.7)])
    reasons_file = tmp_path / "reasons.csv"
    reasons_file.write_text(
        "dataset,bias,ipc,mode,reason\n"
        'cmnist,foreground,10,vanilla,"schedule: 52.5 on 20000 x 256, reproduction.md"\n'
        "cmnist,foreground,10,cobra,stale: this row matches now\n"
        "cmnist,foreground,10,fairdd,not run yet\n"
        "cmnist,foregound,10,cobra,a typo in the bias\n"
    )
    reasons = read_reasons(reasons_file)
    assert reasons[("cmnist", "foreground", 10, "vanilla")] == "schedule: 52.5 on 20000 x 256, reproduction.md"
    grid = [("cmnist", "foreground", 10, m) for m in ("vanilla", "fairdd", "cobra")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = paper_table(cells, grid, reasons).set_index("mode")
    assert table.loc["vanilla", "verdict"] == (
        "acc -5.3 (published outside the seeds' 20.0-21.0) points from published: "
        "schedule: 52.5 on 20000 x 256, reproduction.md"
    )
    assert table.loc["cobra", "verdict"] == "match" and table.loc["fairdd", "verdict"] == "not run"
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert "('cmnist', 'foreground', 10, 'fairdd')" in messages[0] and "cobra" in messages[0]
    assert "foregound" in messages[1] and "not rows of this table" in messages[1]
    assert "biases ['foreground']" in messages[1] and "modes ['cobra', 'fairdd', 'vanilla']" in messages[1]
    # without reasons, the verdict is the differences alone
    assert paper_table(cells, grid).set_index("mode").loc["vanilla", "verdict"].endswith("points from published")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("dataset,bias,ipc,mode\ncmnist,foreground,10,vanilla\n", "lacks \\['reason'\\]"),
        ("dataset,bias,ipc,mode,reason\ncmnist,foreground,ten,vanilla,x\n", "line 2: ipc 'ten' is not a positive"),
        ("dataset,bias,ipc,mode,reason\ncmnist,foreground,10,vanilla, \n", "line 2: the reason is empty"),
        (
            "dataset,bias,ipc,mode,reason\ncmnist,foreground,10,vanilla,a\ncmnist,foreground,10,vanilla,b\n",
            "line 3: .* is listed twice",
        ),
        ("", "is empty"),
        ("dataset,bias,ipc,mode,reason\ncmnist,foreground,10,vanilla,a, b\n", "line 2 has 6 fields, the header 5"),
        ("dataset,bias,ipc,mode,reason\ncmnist,foreground,10,vanilla,a | b\n", "line 2: the reason holds '\\|'"),
        ("dataset,bias,ipc,mode,reason,reason\n", "names the columns \\['reason'\\] more than once"),
        ("dataset,bias,ipc,mode,reason\ncmnist,foreground,\u00b2,vanilla,x\n", "ipc '\u00b2' is not a positive"),
    ],
)
def test_a_bad_reasons_file_is_named_with_what_it_needs(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "reasons.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=expected) as info:
        read_reasons(path)
    assert str(path) in str(info.value) and "dataset', 'bias', 'ipc', 'mode', 'reason'" in str(info.value)


def test_reasons_file_tolerates_spaces_blank_lines_a_bom_and_other_columns(tmp_path: Path) -> None:
    path = tmp_path / "reasons.csv"
    path.write_text(
        '\ufeffdataset, bias, ipc, mode, reason, note\n\ncmnist, foreground, 10, vanilla, "seed spread, 3 seeds", x\n'
    )
    assert read_reasons(path) == {("cmnist", "foreground", 10, "vanilla"): "seed spread, 3 seeds"}
    path.write_bytes(b"dataset,bias,ipc,mode,reason\ncmnist,foreground,10,vanilla,caf\xe9\n")  # Latin-1, not UTF-8
    with pytest.raises(ValueError, match="cannot be read as UTF-8 CSV"):
        read_reasons(path)
    with pytest.raises(ValueError, match="cannot be read"):
        read_reasons(tmp_path)  # a folder
