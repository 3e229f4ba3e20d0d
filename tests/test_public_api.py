"""The public API: what ``import fdd`` offers, ``__all__`` in every module, the message templates kept private."""

from __future__ import annotations

import importlib
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import torch

import fdd
from tests.conftest import TINY_PARAMS, write_tiny_idx

ROOT = Path(fdd.__file__).resolve().parent
MODULES = sorted(
    ".".join(("fdd", *p.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__") for p in ROOT.rglob("*.py")
)


def test_version_is_the_installed_distribution_version() -> None:
    assert fdd.__version__ == version("fdd")
    assert "__version__" in fdd.__all__


@pytest.mark.parametrize("module", MODULES)
def test_every_module_names_its_public_api_without_message_templates(module: str) -> None:
    mod = importlib.import_module(module)
    assert isinstance(getattr(mod, "__all__", None), list), f"{module} has no __all__"
    missing = [name for name in mod.__all__ if not hasattr(mod, name)]
    assert not missing, f"{module}.__all__ names what it does not define: {missing}"
    templates = [name for name in mod.__all__ if name.startswith(("ERR_", "WARN_"))]
    assert not templates, f"{module}.__all__ exports message templates: {templates}"
    assert len(mod.__all__) == len(set(mod.__all__)), f"{module}.__all__ repeats a name"


def test_top_level_names_resolve_to_the_library_objects() -> None:
    from fdd.distillation.run import synthesize
    from fdd.fairness.audit import audit_synthetic

    assert fdd.synthesize is synthesize and fdd.audit_synthetic is audit_synthetic
    assert set(dir(fdd)) >= set(fdd.__all__)
    with pytest.raises(AttributeError, match="no attribute 'synthesise'"):
        fdd.synthesise  # noqa: B018  (the attribute access is the test)


def test_importing_the_config_does_not_load_torch() -> None:
    """``fdd --help`` and the config checks import fdd.config only: the package stays light."""
    code = "import sys, fdd.config; print('torch' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT.parent)
    assert out.stdout.split() == ["False", "False"]


def test_the_package_docstring_example_runs(tmp_path: Path) -> None:
    """The example of ``fdd.__doc__`` on a tiny dataset: prepare, synthesize, audit."""
    write_tiny_idx(tmp_path / "tiny_idx")
    config = fdd.parse_config(TINY_PARAMS)
    data = fdd.prepare_dataset(config.data, workspace=tmp_path)
    assert isinstance(data.train, fdd.GroupedImages) and data.train.num_classes == 3
    result = fdd.synthesize(data.train, mode="cobra", config=config.synthesis, network=config.network, seed=0)
    assert isinstance(result, fdd.SynthesisResult) and len(result.losses) == config.synthesis.iterations
    assert result.synthetic.images.shape[0] == 3 * config.synthesis.ipc
    audit = fdd.audit_synthetic(result.synthetic, data.test, config=config.audit, network=config.network)
    assert isinstance(audit, fdd.AuditResult)
    assert 0 <= audit.summary["deo_m"]["mean"] <= 100 and torch.isfinite(
        torch.tensor(audit.summary["accuracy"]["mean"])
    )


def test_top_level_all_lists_exactly_the_lazy_exports() -> None:
    assert set(fdd.__all__) == {"__version__", *fdd._EXPORTS}
