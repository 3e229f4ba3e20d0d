"""Every user error, wherever it is raised, is one or two lines naming the file or key, exit code 2;
the traceback only with --debug."""

from __future__ import annotations

import errno
import json
import os
import socket
import sqlite3
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fdd.datasets.sources import IDX_FILES, decode_idx, encode_idx
from flows import cli
from tests.image_fixtures import write_folder

ROOT = Path(__file__).resolve().parent.parent
FOLDER_KEYS = {
    "csv": "my_labels.csv",
    "images": "my_images",
    "path_column": "file",
    "label_column": "diagnosis",
    "group_column": "sex",
}
FOLDER_CELLS = {("benign", "F"): 6, ("benign", "M"): 6, ("malignant", "F"): 6, ("malignant", "M"): 6}


def _fdd(ws: Path, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("PREFECT_API_URL", None)
    env.update(extra_env)
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=ws,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _params(ws: Path, **sections: dict) -> None:
    raw = yaml.safe_load((ws / "params.yaml").read_text())
    for name, values in sections.items():
        raw[name] = values if name == "data" else {**raw.get(name, {}), **values}
    (ws / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def _truncate(ws: Path) -> tuple[str, ...]:
    path = ws / "tiny_idx" / IDX_FILES[3]
    path.write_bytes(path.read_bytes()[:-7])
    return ("run",)


def _counts(ws: Path) -> tuple[str, ...]:
    path = ws / "tiny_idx" / IDX_FILES[2]  # 300 test images against 60 test labels
    images = decode_idx(path.read_bytes())
    path.write_bytes(encode_idx(np.concatenate([images] * 5)))
    return ("run",)


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header announces width x height (PIL refuses it on open, before decoding)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


def _folder(ws: Path) -> None:
    write_folder(ws, cells=FOLDER_CELLS)
    _params(ws, data={"dataset": "folder", "folder": FOLDER_KEYS, "download": False})


def _bomb(ws: Path) -> tuple[str, ...]:
    _folder(ws)
    (ws / "my_images/benign/F_2.png").write_bytes(_png_header(20000, 20000))
    return ("stage", "ingest")


def _symlink_out(ws: Path) -> tuple[str, ...]:
    _folder(ws)
    outside = ws.parent / f"{ws.name}-outside.png"
    (ws / "my_images/benign/F_2.png").rename(outside)
    (ws / "my_images/benign/F_2.png").symlink_to(outside)
    return ("stage", "ingest")


def _garbage_db(ws: Path) -> tuple[str, ...]:
    (ws / ".prefect").mkdir()
    (ws / ".prefect/prefect.db").write_bytes(b"this is not an SQLite database" * 100)
    return ("run",)


def _write(name: str, content: bytes) -> Callable[[Path], tuple[str, ...]]:
    def make(ws: Path) -> tuple[str, ...]:
        (ws / name).write_bytes(content)
        return ("run", "--params", name) if name.startswith("params") else ("run", "--preset", name)

    return make


def _preset_folder(ws: Path) -> tuple[str, ...]:
    (ws / "presetdir").mkdir()
    return ("run", "--preset", "presetdir")


# case -> (set-up returning the command, text the message must hold)
CASES: dict[str, tuple[Callable[[Path], tuple[str, ...]], tuple[str, ...]]] = {
    "params-not-utf8": (
        _write("params-latin1.yaml", "data: {dataset: 'caf\xe9'}\n".encode("latin-1")),
        ("params-latin1.yaml", "UTF-8"),
    ),
    "params-empty": (_write("params-empty.yaml", b"# nothing yet\n"), ("params-empty.yaml", "is empty", "{}")),
    "params-missing": (lambda ws: ("run", "--params", "nope.yaml"), ("nope.yaml", "does not exist")),
    "params-bad-yaml": (_write("params-bad.yaml", b"synthesis: {ipc: 10\n"), ("params-bad.yaml", "line")),
    "preset-folder": (_preset_folder, ("presetdir", "is a folder")),
    "preset-list": (_write("listed.yaml", b"- synthesis\n- audit\n"), ("listed.yaml", "mapping", "list")),
    "preset-unknown": (lambda ws: ("run", "--preset", "fastest"), ("'fastest'", "known presets")),
    "set-broken-list": (lambda ws: ("run", "--set", "synthesis.modes=[vanilla,cobra"), ("synthesis.modes", "YAML")),
    "set-no-equals": (lambda ws: ("run", "--set", "synthesis.ipc"), ("--set", "section.key=value")),
    "lr-infinite": (lambda ws: ("run", "--set", "audit.lr=.inf"), ("audit.lr", "finite")),
    "lr-img-nan": (
        lambda ws: ("distill", "--mode", "cobra", "--set", "synthesis.lr_img=.nan"),
        ("synthesis.lr_img", "finite"),
    ),
    "cuda-without-gpu": (lambda ws: ("run", "--set", "runtime.device=cuda"), ("runtime.device", "'cpu' or 'auto'")),
    "idx-truncated": (_truncate, (IDX_FILES[3], "truncated")),
    "idx-count-mismatch": (_counts, (IDX_FILES[2], "300 images", IDX_FILES[3], "60 labels")),
    "idx-dir-missing": (lambda ws: ("run", "--set", "data.idx_dir=elsewhere"), ("elsewhere", IDX_FILES[0])),
    "prefect-db-garbage": (_garbage_db, ("prefect.db", "not a usable SQLite database")),
    "png-decompression-bomb": (_bomb, ("F_2.png", "decompression bomb")),
    "folder-symlink-outside": (_symlink_out, ("F_2.png", "outside", "my_images")),
    "show-without-results": (lambda ws: ("show",), ("comparison.csv", "fdd run")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_error_is_one_or_two_lines_with_exit_code_2(case: str, tiny_workspace: Path) -> None:
    if case == "cuda-without-gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    setup, expected = CASES[case]
    args = setup(tiny_workspace)
    result = _fdd(tiny_workspace, *args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    assert 1 <= len(lines) <= 3 and lines[0].startswith("error: "), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    for text in expected:
        assert text in result.stderr, (text, result.stderr)
    assert not (tiny_workspace / "data/prepared").exists()  # nothing was written


def test_unreachable_prefect_server_is_exit_code_4(tiny_workspace: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/api"  # nothing listens there
    result = _fdd(tiny_workspace, "run", PREFECT_API_URL=url)
    assert result.returncode == 4 and result.stderr.strip().splitlines() == [f"error: {cli.ERR_NO_API.format(url=url)}"]
    assert not (tiny_workspace / "data/prepared").exists()


def test_debug_adds_the_traceback(tiny_workspace: Path) -> None:
    result = _fdd(tiny_workspace, "run", "--debug", "--set", "audit.lr=.inf")
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr and "error: invalid configuration" in result.stderr
    assert "--debug" in _fdd(tiny_workspace, "--help").stdout and "exit codes" in _fdd(tiny_workspace, "--help").stdout


def test_full_disk_inside_a_stage_is_one_line(
    tiny_workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_space(_fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("fdd.files.os.fsync", no_space)
    code = cli.main(
        ["stage", "ingest", "--workspace", str(tiny_workspace), "--params", str(tiny_workspace / "params.yaml")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: no space left on the device holding ") and "data/prepared/train.pt" in err[0]
    assert not list((tiny_workspace / "data").rglob("*.tmp"))  # the atomic write removed its temporary file


def test_corrupt_sqlite_error_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_HOME", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    (tmp_path / ".prefect").mkdir()
    db = tmp_path / ".prefect/prefect.db"
    db.write_bytes(b"garbage" * 1000)
    with pytest.raises(cli.PrefectDatabaseError, match="prefect.db is not a usable SQLite database"):
        cli.check_prefect_database(tmp_path)
    db.unlink()
    sqlite3.connect(db).execute("create table t (x)").connection.commit()
    cli.check_prefect_database(tmp_path)  # a sound database passes


@pytest.mark.slow
def test_error_inside_the_prefect_flow_is_unwrapped(tiny_workspace: Path) -> None:
    """A bad label found by ingest inside `fdd run` (past the cheap checks): exit 2, no traceback."""
    path = tiny_workspace / "tiny_idx" / IDX_FILES[3]
    labels = decode_idx(path.read_bytes())
    labels[0] = 7  # the train split has classes 0..2
    path.write_bytes(encode_idx(labels))
    result = _fdd(tiny_workspace, "run")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and IDX_FILES[3] in errors[0] and "labels must be 0..2" in errors[0], result.stderr


@pytest.mark.slow
def test_one_group_warns_and_leaves_the_fairness_figures_empty(tiny_workspace: Path) -> None:
    """A DEO of 0 on data with one protected group would read as perfectly fair: warn, and say so."""
    from fdd.fairness.metrics import SingleGroupWarning
    from flows.pipeline import STAGES, load_config, run_single_stage

    write_folder(tiny_workspace, cells={("benign", "F"): 10, ("malignant", "F"): 10})
    _params(
        tiny_workspace,
        data={"dataset": "folder", "folder": FOLDER_KEYS, "download": False, "image_size": 16},
        synthesis={"modes": ["vanilla"]},
    )
    config = load_config(tiny_workspace / "params.yaml")
    with pytest.warns(SingleGroupWarning, match=r"only one protected group \(F\) has samples in the train split"):
        run_single_stage("ingest", config, str(tiny_workspace))
    for name in STAGES[1:]:
        run_single_stage(name, config, str(tiny_workspace), "vanilla" if name in ("synthesize", "audit") else None)
    metrics = json.loads((tiny_workspace / "data/metrics.json").read_text())["vanilla"]
    assert metrics["deo_m"] is None and metrics["deo_a"] is None and "fairness cannot be assessed" in metrics["note"]
    assert metrics["accuracy"] is not None
    report = (tiny_workspace / "data/report/report.md").read_text()
    assert "**Warning:** only one protected group (F)" in report and "n/a (one group)" in report
