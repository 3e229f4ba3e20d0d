"""What a stage's cache key covers (issue 19, item 1), without running stages.

* settings that cannot change a stage's outputs (``synthesis.modes`` for one mode's
  synthesis, ``log_every``, ``checkpoint_every``, the device) are left out;
* the source part covers the import closure of the stage's task module only;
* ``data/settings/<stage>.json`` (what ``dvc.yaml``'s stages depend on) changes exactly
  when the part of the key it holds does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fdd.config import PipelineConfig, SynthesisConfig
from flows.configuration import parse_params as parse_config
from flows.pipeline import PER_MODE_STAGES, SETTINGS_DIR, STAGES, stage_call, write_stage_settings
from tasks import base
from tasks.base import stage_key, stage_module, stage_settings, stage_sources

ROOT = Path(__file__).resolve().parent.parent


def _keys(config: PipelineConfig, workspace: str = ".", mode: str = "vanilla") -> dict[str, str]:
    """stage -> key for ``config`` with fixed (fake) inputs: only settings and sources vary."""
    keys = {}
    modes = tuple(config.synthesis.modes)
    for name in STAGES:
        _task, kwargs = stage_call(
            name,
            mode if name in PER_MODE_STAGES else None,
            config=config,
            workspace=workspace,
            device="cpu",
            modes=modes,
            outputs=lambda folder: {f"data/{folder}/x": "0" * 64},
        )
        keys[name] = stage_key(name, kwargs)
    return keys


def test_non_output_settings_leave_every_key_unchanged() -> None:
    base_config = parse_config({"synthesis": {"modes": ["vanilla", "cobra"]}})
    before = _keys(base_config)
    for change in ({"log_every": 3}, {"checkpoint_every": 7}):
        assert _keys(parse_config({"synthesis": {"modes": ["vanilla", "cobra"], **change}})) == before, change
    assert _keys(parse_config({"synthesis": {"modes": ["vanilla", "cobra"]}, "runtime": {"device": "cuda"}})) == before
    assert _keys(parse_config({"synthesis": {"modes": ["vanilla", "cobra"]}, "sweep": {"seeds": [4]}})) == before
    # adding a mode: the existing modes' synthesis and audit keep their keys; the report lists the modes
    more = _keys(parse_config({"synthesis": {"modes": ["vanilla", "cobra", "fairdd"]}}))
    assert {name for name in STAGES if more[name] != before[name]} == {"report"}


def test_output_settings_change_the_keys_that_read_them() -> None:
    before = _keys(parse_config({}))
    ipc = _keys(parse_config({"synthesis": {"ipc": 3}}))
    assert {name for name in STAGES if ipc[name] != before[name]} == {"synthesize", "report"}
    epochs = _keys(parse_config({"audit": {"epochs": 7}}))
    assert {name for name in STAGES if epochs[name] != before[name]} == {"audit", "report"}
    width = _keys(parse_config({"network": {"width": 16}}))
    assert {name for name in STAGES if width[name] != before[name]} == {"features", "synthesize", "audit", "report"}
    assert _keys(parse_config({"runtime": {"seed": 1}}))["synthesize"] != before["synthesize"]
    # the mode and the inputs are part of the key, the workspace is not
    assert _keys(parse_config({}), mode="cobra")["synthesize"] != before["synthesize"]
    assert _keys(parse_config({}), workspace="/elsewhere") == before


def test_output_settings_drop_exactly_the_declared_keys() -> None:
    settings = PipelineConfig().output_settings()
    assert set(settings) == {"runtime", "data", "network", "features", "barycenters", "synthesis", "audit"}
    assert set(settings["synthesis"]) == set(SynthesisConfig.model_fields) - {"modes", "log_every", "checkpoint_every"}
    assert settings["runtime"] == {"seed": 0}
    assert settings["synthesis"]["mtt"] == PipelineConfig().synthesis.mtt.model_dump(mode="json")


def test_each_stage_hashes_the_sources_it_imports() -> None:
    report = set(stage_sources(stage_module("report")))
    synthesize = set(stage_sources(stage_module("synthesize")))
    assert {"tasks/report.py", "tasks/base.py"} <= report
    assert "tasks/synthesize.py" not in report and not any("synthesis" in path for path in report)
    assert "tasks/report.py" not in synthesize
    assert any(path.endswith("/synthesis.py") for path in synthesize)  # wherever the package puts it
    for name in STAGES:  # every file exists and belongs to the project's packages
        for rel in stage_sources(stage_module(name)):
            assert (ROOT / rel).is_file() and rel.split("/")[0] in base.SOURCE_PACKAGES, rel


def test_closure_follows_imports_of_every_form(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A small project tree: absolute, relative, lazy and ``from package import module`` imports."""
    files = {
        "fdd/__init__.py": "from fdd.unused import thing  # a parent package's own imports are not followed\n",
        "fdd/unused.py": "thing = 1\n",
        "fdd/core/__init__.py": "from .maths import add\n",
        "fdd/core/maths.py": "from ..files import write\n\ndef add(a, b):\n    return a + b\n",
        "fdd/files.py": "import os\n\ndef write():\n    import fdd.lazy as lazy\n    return lazy\n",
        "fdd/lazy.py": "import numpy\n",
        "fdd/plots.py": "from fdd.core import maths\n",
        "fdd/other.py": "x = 2\n",
        "tasks/__init__.py": "",
        "tasks/base.py": "from fdd import files\n",
        "tasks/one.py": "from tasks.base import files\nfrom fdd.core import add\nfrom fdd import plots\n",
        "tasks/two.py": "from . import base\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    monkeypatch.setattr(base, "PACKAGE_ROOT", tmp_path)
    base.stage_sources.cache_clear()
    base.source_digest.cache_clear()
    try:
        assert base.stage_sources("tasks.one") == (
            "fdd/__init__.py",
            "fdd/core/__init__.py",
            "fdd/core/maths.py",
            "fdd/files.py",
            "fdd/lazy.py",
            "fdd/plots.py",
            "tasks/__init__.py",
            "tasks/base.py",
            "tasks/one.py",
        )
        assert base.stage_sources("tasks.two") == (
            "fdd/__init__.py",
            "fdd/files.py",
            "fdd/lazy.py",
            "tasks/__init__.py",
            "tasks/base.py",
            "tasks/two.py",
        )
        one, two = base.source_digest("tasks.one"), base.source_digest("tasks.two")
        (tmp_path / "fdd/core/maths.py").write_text(files["fdd/core/maths.py"] + "# edited\n")
        base.source_digest.cache_clear()
        assert base.source_digest("tasks.one") != one and base.source_digest("tasks.two") == two
    finally:
        base.stage_sources.cache_clear()
        base.source_digest.cache_clear()


def _tree_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "tree"
    for folder in base.SOURCE_PACKAGES:
        shutil.copytree(ROOT / folder, copy / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


@pytest.mark.parametrize(
    ("edited", "changed"),
    [("report", {"report"}), ("synthesize", {"synthesize"}), ("base", set(STAGES))],
)
def test_editing_a_module_changes_only_the_keys_of_the_stages_that_run_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edited: str, changed: set[str]
) -> None:
    config = parse_config({})
    before = _keys(config)
    copy = _tree_copy(tmp_path)
    monkeypatch.setattr(base, "PACKAGE_ROOT", copy)
    base.stage_sources.cache_clear()
    base.source_digest.cache_clear()
    try:
        assert _keys(config) == before  # same files, same keys, wherever the tree lies
        path = copy / "tasks" / f"{edited}.py"
        path.write_text(path.read_text() + "\n# a comment\n")
        base.source_digest.cache_clear()
        after = _keys(config)
    finally:
        base.stage_sources.cache_clear()
        base.source_digest.cache_clear()
    assert {name for name in STAGES if after[name] != before[name]} == changed


def test_settings_files_follow_the_keys(tmp_path: Path) -> None:
    """``data/settings/<stage>.json`` changes exactly when the stage's key (for fixed inputs) does."""

    def settings(raw: dict) -> dict[str, str]:
        write_stage_settings(parse_config(raw), str(tmp_path))
        return {name: (tmp_path / SETTINGS_DIR / f"{name}.json").read_text() for name in STAGES}

    first = settings({"synthesis": {"modes": ["vanilla", "cobra"]}})
    assert json.loads(first["synthesize"])["settings"]["synthesis"]["ipc"] == 10
    assert "modes" not in json.loads(first["synthesize"])["settings"]["synthesis"]
    mtimes = {name: (tmp_path / SETTINGS_DIR / f"{name}.json").stat().st_mtime_ns for name in STAGES}
    assert settings({"synthesis": {"modes": ["vanilla", "cobra"], "log_every": 2}}) == first
    # unchanged files are not rewritten
    assert {name: (tmp_path / SETTINGS_DIR / f"{name}.json").stat().st_mtime_ns for name in STAGES} == mtimes
    more = settings({"synthesis": {"modes": ["vanilla", "cobra", "fairdd"]}})
    assert {name for name in STAGES if more[name] != first[name]} == {"report"}
    audit = settings({"synthesis": {"modes": ["vanilla", "cobra"]}, "audit": {"epochs": 3}})
    assert {name for name in STAGES if audit[name] != first[name]} == {"audit", "report"}
    # the file holds exactly what the key is built from besides inputs and mode
    config = parse_config({"synthesis": {"modes": ["vanilla", "cobra"]}, "audit": {"epochs": 3}})
    _task, kwargs = stage_call(
        "audit",
        "cobra",
        config=config,
        workspace=str(tmp_path),
        device="cpu",
        modes=("vanilla", "cobra"),
        outputs=lambda folder: {},
    )
    assert json.loads(audit["audit"]) == stage_settings("audit", kwargs)


def test_manifest_check_trusts_only_unaltered_outputs_and_names_what_is_wrong(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tasks.base import manifest_check, record_outputs

    folder = tmp_path / "data/partition"
    folder.mkdir(parents=True)
    out = folder / "partition.csv"
    out.write_text("a,b\n1,2\n")
    outputs = record_outputs(tmp_path, folder, [out], key="k1")
    assert manifest_check(tmp_path, folder, "k1") == outputs == {"data/partition/partition.csv": base.sha256_file(out)}
    with caplog.at_level("INFO", logger="fdd"):
        assert manifest_check(tmp_path, folder, "k2", stage="partition") is None  # other settings: no warning
    assert not [r for r in caplog.records if r.levelname == "WARNING"]

    def warned(expected: str) -> None:
        caplog.clear()
        with caplog.at_level("WARNING", logger="fdd"):
            assert manifest_check(tmp_path, folder, "k1", stage="partition") is None
        assert any(expected in r.getMessage() for r in caplog.records if r.levelname == "WARNING"), caplog.text

    out.write_text("a,b\n1,3\n")
    warned(f"output {out} changed since the stage wrote it")
    out.unlink()
    warned(f"output {out} is missing; running the stage again")
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps({"cache_key": "k1", "outputs": {"../../etc/passwd": "0" * 64}}))
    warned("is outside the workspace")
    manifest.write_text("{not json")
    warned(f"{manifest} cannot be read")
    manifest.write_text(json.dumps({"cache_key": "k1", "outputs": ["data/partition/partition.csv"]}))
    warned(f"{manifest} cannot be read")
