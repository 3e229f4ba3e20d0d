"""The library on a CUDA device (skipped without one; run on the GPU machine)."""

from __future__ import annotations

import pytest
import torch

from fdd.audit import audit_synthetic
from fdd.config import AuditConfig, FeaturesConfig, NetworkConfig, SynthesisConfig
from fdd.data import GroupedImages
from fdd.features import group_features, separation_table
from fdd.synthesis import synthesize

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
NET = NetworkConfig(width=8, depth=2)


def _data(n_per_class: int = 24) -> GroupedImages:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(n_per_class)
    groups = torch.randint(0, 2, labels.shape, generator=g)
    images = torch.randint(0, 256, (labels.numel(), 3, 16, 16), generator=g, dtype=torch.uint8)
    return GroupedImages(images=images, labels=labels, groups=groups, class_names=("a", "b", "c"),
                         group_names=("x", "y"), mean=(0.5,) * 3, std=(0.5,) * 3)


@pytest.mark.parametrize("mode", ["vanilla", "fairdd", "cobra"])
def test_synthesis_and_audit_on_cuda(mode: str) -> None:
    data = _data()
    result = synthesize(data, mode=mode, config=SynthesisConfig(ipc=2, iterations=3, batch_real=8, warmup_epochs=2),
                        network=NET, seed=0, device="cuda")
    assert result.synthetic.images.device.type == "cpu" and torch.isfinite(result.synthetic.images).all()
    audited = audit_synthetic(result.synthetic, data, config=AuditConfig(num_eval=2, epochs=3), network=NET, device="cuda")
    assert len(audited.reports) == 2 and 0 <= audited.summary["accuracy"]["mean"] <= 100


def test_features_on_cuda() -> None:
    data = _data()
    stats = group_features(data, config=FeaturesConfig(max_per_cell=5, projection_dim=3), network=NET, device="cuda")
    table = separation_table(stats, class_names=data.class_names)
    assert table["groups_present"].tolist() == [2, 2, 2]


def test_compiled_synthesis_matches_eager_closely() -> None:
    data = _data()
    config = SynthesisConfig(ipc=2, iterations=2, batch_real=8, warmup_epochs=1)
    eager = synthesize(data, mode="cobra", config=config, network=NET, seed=0, device="cuda")
    compiled = synthesize(data, mode="cobra", config=config.model_copy(update={"compile": True}),
                          network=NET, seed=0, device="cuda")
    assert torch.allclose(eager.synthetic.images, compiled.synthetic.images, atol=1e-3)
