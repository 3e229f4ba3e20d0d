"""What the package ships for a workspace: presets and the `fdd init` templates, in step with the repository."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flows import cli
from flows.configuration import load_config
from flows.workspace import ERR_EXISTS, ERR_UNKNOWN_PRESET, WORKSPACE_FILES, init_workspace, preset_file, preset_names

ROOT = Path(__file__).resolve().parent.parent


def test_params_template_is_the_repository_params() -> None:
    """`fdd init` hands out the same defaults as the checkout's params.yaml (edit both together)."""
    assert (ROOT / "flows/templates/params.yaml").read_text() == (ROOT / "params.yaml").read_text()
    assert (ROOT / "flows/templates/dvcignore").read_text() == (ROOT / ".dvcignore").read_text()


def test_dvc_template_is_the_repository_pipeline_without_the_source_tree() -> None:
    """The same stages, params and outputs as dvc.yaml; commands through the installed `fdd`, no deps on the sources."""
    repo = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    template = yaml.safe_load((ROOT / "flows/templates/dvc.yaml.template").read_text())["stages"]
    assert list(template) == list(repo)
    for name, stage in repo.items():
        body, shipped = stage.get("do", stage), template[name].get("do", template[name])
        assert shipped["cmd"] == body["cmd"].replace("python -m flows.cli stage", "fdd stage"), name
        assert shipped.get("deps", []) == [d for d in body.get("deps", []) if d not in ("fdd", "tasks", "flows")], name
        for key in set(body) | set(shipped):
            if key not in ("cmd", "deps"):
                assert shipped.get(key) == body.get(key), (name, key)
        assert ("foreach" in stage) == ("foreach" in template[name])


def test_init_writes_the_templates_and_refuses_to_overwrite(tmp_path: Path) -> None:
    ws = tmp_path / "new" / "ws"
    written = init_workspace(ws)
    assert sorted(p.name for p in written) == sorted(WORKSPACE_FILES)
    assert load_config(ws / "params.yaml").synthesis.modes == ("vanilla", "cobra")  # a valid configuration
    (ws / "params.yaml").write_text("runtime: {seed: 3}\n")
    (ws / "dvc.yaml").unlink()
    with pytest.raises(FileExistsError, match=ERR_EXISTS.split("{")[0]) as info:
        init_workspace(ws)
    assert "params.yaml" in str(info.value) and "--force" in str(info.value)
    assert not (ws / "dvc.yaml").exists()  # nothing written when one file is in the way
    init_workspace(ws, force=True)
    assert (ws / "params.yaml").read_text() == (ROOT / "params.yaml").read_text()
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        init_workspace(tmp_path / "file")


def test_cli_init(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["init", str(tmp_path / "ws")]) == 0
    assert (tmp_path / "ws/dvc.yaml").exists() and "fdd run" in capsys.readouterr().out
    assert cli.main(["init", str(tmp_path / "ws")]) == 2
    assert "already has" in capsys.readouterr().err


def test_shipped_presets_are_found_by_name() -> None:
    assert {"full", "quick", "cifar10s", "dc", "mtt"} <= set(preset_names())
    assert preset_file("full") == ROOT / "flows/presets/full.yaml"
    with pytest.raises(ValueError, match="unknown preset 'fulll'") as info:
        preset_file("fulll")
    assert str(info.value) == ERR_UNKNOWN_PRESET.format(name="fulll", known=preset_names())
    # the command line names it in one line and exits 2 (a user error)
    assert cli.main(["run", "--preset", "fulll", "--params", str(ROOT / "params.yaml")]) == 2


def test_the_dvc_template_is_not_a_pipeline_of_the_repository() -> None:
    """DVC collects every dvc.yaml of a repository: the template must not be one (`dvc repro` would run it)."""
    assert not list((ROOT / "flows").rglob("dvc.yaml"))
    assert not list((ROOT / "fdd").rglob("dvc.yaml")) and not list((ROOT / "tasks").rglob("dvc.yaml"))
