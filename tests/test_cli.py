"""The command line's own surface: `fdd config`, `fdd --version`, exit codes, `fdd stage` logging."""

from __future__ import annotations

import json
import logging
import os
import re
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from flows import cli
from flows.configuration import load_config

ROOT = Path(__file__).resolve().parent.parent


def _sources(text: str) -> dict[str, str]:
    """``{section.key: source}`` read back from the ``# source`` comments of `fdd config`."""
    sources, path = {}, []
    for line in text.splitlines():
        if (
            not line.strip()
            or line.startswith("#")
            or line.lstrip().startswith("- ")
            or "#" not in line
            and ":" not in line
        ):
            continue
        indent = (len(line) - len(line.lstrip())) // 2
        key = line.strip().split(":", 1)[0]
        path = path[:indent] + [key]
        match = re.search(r"  # (.+)$", line)
        if match:
            sources[".".join(path)] = match.group(1)
    return sources


def test_fdd_config_prints_the_resolved_values_and_their_sources(tmp_path: Path, capsys) -> None:
    preset = tmp_path / "short.yaml"
    preset.write_text("synthesis: {iterations: 7, modes: [cobra]}\naudit: {epochs: 9}\n")
    argv = [
        "config",
        "--params",
        str(ROOT / "params.yaml"),
        "--preset",
        str(preset),
        "--set",
        "synthesis.ipc=3",
        "--set",
        "audit.epochs=11",
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    expected = load_config(
        ROOT / "params.yaml", preset=[preset], overrides={"synthesis": {"ipc": 3}, "audit": {"epochs": 11}}
    )
    assert yaml.safe_load(out) == expected.model_dump(mode="json")  # the comments aside, it is the config
    sources = _sources(out)
    assert sources["synthesis.ipc"] == "--set"
    assert sources["audit.epochs"] == "--set"  # --set wins over the preset
    assert sources["synthesis.iterations"] == f"preset {preset}"
    assert sources["synthesis.modes"] == f"preset {preset}"
    assert sources["data.dataset"] == str(ROOT / "params.yaml")
    assert sources["data.shading"] == "default"  # not in params.yaml: the model's default
    assert sources["data.group_noise.seed"] == str(ROOT / "params.yaml")  # nested sections are walked
    assert sources["schedules"] == str(ROOT / "params.yaml")

    assert cli.main([*argv, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["config"] == expected.model_dump(mode="json")
    assert {k: shown["sources"][k] for k in sources} == sources


def test_fdd_config_names_a_shipped_preset_by_name_and_rejects_bad_values(capsys) -> None:
    params = str(ROOT / "params.yaml")
    assert cli.main(["config", "--params", params, "--preset", "full", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["sources"]["synthesis.iterations"] == "preset full"
    assert shown["config"]["synthesis"]["iterations"] == 2600
    assert cli.main(["config", "--params", params, "--set", "synthesis.ipc=0"]) == 2
    captured = capsys.readouterr()
    assert "synthesis.ipc" in captured.err and captured.out == ""


def test_version_names_fdd_and_its_libraries(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"fdd {metadata.version('fdd')} (Python ")
    for name in ("torch", "prefect", "dvc", "pot"):
        assert f"{name} {metadata.version(name)}" in out


def test_help_and_readme_list_the_exit_codes(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    help_text = capsys.readouterr().out
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Exit codes", 1)[1].split("\n## ", 1)[0]
    assert [code for code, _ in cli.EXIT_CODES] == [0, 1, 2, 3, 4, 130]
    for code, meaning in cli.EXIT_CODES:
        assert f"  {code}  {meaning}" in help_text
        assert f"\n| {code} | {meaning} |\n" in section, f"README's exit code {code} differs from the CLI's"


def test_exit_code_3_when_the_workspace_is_busy(tiny_workspace: Path, capsys) -> None:
    import subprocess
    import sys

    # another process holds the lock (it is re-entrant within one process)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from flows.lock import workspace_lock\n"
            "with workspace_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)",
            str(tiny_workspace),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        code = cli.main(
            ["stage", "ingest", "--params", str(tiny_workspace / "params.yaml"), "--workspace", str(tiny_workspace)]
        )
    finally:
        holder.kill()
        holder.wait()
    assert code == 3
    assert "is in use by another fdd run" in capsys.readouterr().err
    assert not (tiny_workspace / "data/prepared").exists()


def test_fdd_stage_logs_its_info_lines(tiny_workspace: Path, capsys) -> None:
    logger = logging.getLogger("fdd")
    handlers = list(logger.handlers)
    code = cli.main(
        ["stage", "ingest", "--params", str(tiny_workspace / "params.yaml"), "--workspace", str(tiny_workspace)]
    )
    assert code == 0
    err = capsys.readouterr().err
    assert re.search(r"\| INFO +\| fdd - ingested cmnist .*: 120 train / 60 test images", err), err[-2000:]
    assert re.search(r"\| INFO +\| fdd - stage ingest wrote 3 files", err), err[-2000:]
    assert logger.handlers == handlers  # the handler is removed again (no doubled lines on the next call)


def _metrics(accuracy: float, deo_m: float) -> dict[str, float]:
    return {"accuracy": accuracy, "deo_m": deo_m, "deo_a": 1.0, "worst_group_accuracy": 1.0}


def test_headline_says_what_each_mode_changed_against_vanilla() -> None:
    from fdd.report.assemble import headline

    metrics = {"vanilla": _metrics(52.351, 100.0), "cobra": _metrics(89.674, 16.89)}
    assert headline(metrics) == (
        "Against vanilla, cobra raised accuracy from 52.35% to 89.67% and cut the worst-class gap DEO_M "
        "from 100.00 to 16.89 points."
    )
    metrics = {"fairdd": _metrics(50.0, 100.0), "vanilla": _metrics(60.0, 90.0), "cobra": _metrics(60.001, 90.0)}
    assert headline(metrics) == (
        "Against vanilla, fairdd lowered accuracy from 60.00% to 50.00% and widened the worst-class gap DEO_M "
        "from 90.00 to 100.00 points; cobra kept accuracy at 60.00% and left the worst-class gap DEO_M at "
        "90.00 points."
    )
    assert headline({"cobra": _metrics(90.0, 10.0)}) is None  # one mode: nothing to compare
    assert headline({"cobra": _metrics(90.0, 10.0), "fairdd": _metrics(80.0, 20.0)}) is None  # no vanilla


def test_fdd_show_prints_the_table_and_its_headline(tmp_path: Path, capsys) -> None:
    (tmp_path / "data/report").mkdir(parents=True)
    (tmp_path / "data/report/comparison.csv").write_text("mode,Acc (%)\nvanilla,52.35 ± 0.00\ncobra,89.67 ± 0.00\n")
    (tmp_path / "data/metrics.json").write_text(
        json.dumps({"vanilla": _metrics(52.35, 100.0), "cobra": _metrics(89.67, 16.89)})
    )
    assert cli.main(["show", "--workspace", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| cobra   | 89.67 ± 0.00 |" in out
    assert out.rstrip().endswith("cut the worst-class gap DEO_M from 100.00 to 16.89 points.")


def test_quick_preset_restores_the_shipped_params_and_full_restores_the_published_settings() -> None:
    """flows/presets/quick.yaml holds exactly the quick CPU values of params.yaml (merging it over
    params.yaml, or over the full preset, gives back the shipped configuration), and the full
    preset resets each quick-only choice to the published COBRA-DM setting."""
    params = ROOT / "params.yaml"
    shipped = load_config(params).model_dump(mode="json")
    quick = yaml.safe_load((ROOT / "flows/presets/quick.yaml").read_text())
    assert load_config(params, preset=ROOT / "flows/presets/quick.yaml").model_dump(mode="json") == shipped
    back = load_config(params, preset=[ROOT / "flows/presets/full.yaml", ROOT / "flows/presets/quick.yaml"])
    assert back.model_dump(mode="json") == shipped
    full = load_config(params, preset=ROOT / "flows/presets/full.yaml")
    assert (full.synthesis.init, full.synthesis.lr_img, full.runtime.num_threads) == ("real", 1.0, None)
    assert (full.synthesis.iterations, full.synthesis.batch_real, full.network.width) == (2600, 600, 128)
    assert quick["synthesis"]["init"] == "barycenter" and shipped["synthesis"]["init"] == "barycenter"
