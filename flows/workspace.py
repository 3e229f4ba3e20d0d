"""What the installed package ships for a workspace: presets and the ``fdd init`` templates.

Both are package data of :mod:`flows` (``flows/presets/*.yaml``, ``flows/templates/``), read
through :mod:`importlib.resources`, so they work the same from the source tree and from an
installed wheel.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

from fdd.files import atomic_write_bytes

PRESETS = files("flows") / "presets"
TEMPLATES = files("flows") / "templates"
#: The files ``fdd init`` writes: name in the workspace -> template. The DVC template is not
#: called dvc.yaml: DVC would take it for a second pipeline of the repository holding it.
WORKSPACE_FILES: dict[str, str] = {
    "params.yaml": "params.yaml",
    "dvc.yaml": "dvc.yaml.template",
    ".dvcignore": "dvcignore",
}

ERR_UNKNOWN_PRESET = "unknown preset {name!r}; known presets: {known} (or a path to a YAML file)"
ERR_EXISTS = "{directory} already has {names}; nothing was written (pass --force to overwrite them)"
ERR_NOT_DIRECTORY = "{directory} exists and is not a directory"


def preset_names() -> list[str]:
    """The presets shipped with fdd (``fdd run --preset NAME``)."""
    return sorted(p.name.removesuffix(".yaml") for p in PRESETS.iterdir() if p.name.endswith(".yaml"))


def preset_file(name: str) -> Path:
    """The shipped preset ``name`` (e.g. ``"full"``, ``"cifar10s"``, ``"dc"``).

    A path on disk: fdd is installed as files (a wheel or the source tree), not zipped.
    """
    candidate = PRESETS / f"{name}.yaml"
    if not candidate.is_file():
        raise ValueError(ERR_UNKNOWN_PRESET.format(name=name, known=preset_names()))
    return Path(str(candidate))


def init_workspace(directory: str | os.PathLike[str], *, force: bool = False) -> list[Path]:
    """Write ``params.yaml``, ``dvc.yaml`` and ``.dvcignore`` into ``directory`` (created if needed).

    The stages of ``dvc.yaml`` run ``fdd stage NAME``, so the workspace needs the installed
    package and nothing of the source tree. Existing files are kept unless ``force``: if any
    would be overwritten, nothing is written.
    """
    root = Path(directory)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(ERR_NOT_DIRECTORY.format(directory=root))
    existing = [name for name in WORKSPACE_FILES if (root / name).exists()]
    if existing and not force:
        raise FileExistsError(ERR_EXISTS.format(directory=root, names=existing))
    root.mkdir(parents=True, exist_ok=True)
    written = []
    for name, template in WORKSPACE_FILES.items():
        atomic_write_bytes(root / name, (TEMPLATES / template).read_bytes())
        written.append(root / name)
    return written
