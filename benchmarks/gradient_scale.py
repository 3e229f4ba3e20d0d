"""Size of the pixel gradient of each backbone's matching loss, per mode, at a fresh network.

    python benchmarks/gradient_scale.py --backbones cafe,dc --modes fairdd,cobra

With one ``lr_img`` per backbone for every mode, the mode whose loss has the larger pixel
gradient moves the synthetic images further per step. FairDD sums one distance per group
present in a class; COBRA measures one distance to the groups' barycenter. For CAFE's
squared distance the two are exactly proportional (``sum_g ||m_g - s||^2 =
|P_c| ||b - s||^2 + const``), so FairDD's gradient is ``|P_c|`` times COBRA's; for DC's
cosine distance the ratio is not exact but of the same kind. This script measures the
mean norm over ``--seeds`` fresh networks and real batches on C-MNIST (foreground).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fdd.config import NetworkConfig, SynthesisConfig
from fdd.datasets.colored import build_colored
from fdd.datasets.containers import stratified_subset
from fdd.datasets.sources import load_raw
from fdd.distillation.backbones import RECOMMENDED, build_synthesizer
from fdd.models.networks import reset_parameters_


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default="cafe,dc")
    parser.add_argument("--modes", default="fairdd,cobra")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--batch-real", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--train-limit", type=int, default=3000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-root", default="data/raw")
    args = parser.parse_args()
    raw = load_raw("mnist", root=args.data_root, download=False)
    train = stratified_subset(build_colored(raw, bias="foreground", seed=0).train, size=args.train_limit, seed=0)
    network = NetworkConfig(width=args.width)
    print("| backbone | mode | pixel-gradient norm (mean) |\n|---|---|---|")
    for backbone in args.backbones.split(","):
        if backbone == "dm":
            raise SystemExit("dm has no matching_loss of its own step; use bench_synthesis.py")
        settings = {k: v for k, v in RECOMMENDED[backbone].items() if k in ("lr_img", "momentum")}
        for mode in args.modes.split(","):
            norms = []
            for seed in range(args.seeds):
                config = SynthesisConfig(
                    backbone=backbone, modes=(mode,), ipc=args.ipc, iterations=1, batch_real=args.batch_real, **settings
                )
                loop = build_synthesizer(
                    train, mode=mode, config=config, network=network, seed=seed, device=args.device
                )
                reset_parameters_(loop.net, generator=loop.generator)
                loop.net.requires_grad_(False)
                (pixels,) = torch.autograd.grad(loop.matching_loss(), loop.syn_images)
                norms.append(float(pixels.norm()))
            print(f"| {backbone} | {mode} | {sum(norms) / len(norms):.4g} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
