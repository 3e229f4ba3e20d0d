"""Probe: is ResNet18's low audit accuracy on IPC 10 sets batch norm's running statistics?

Trains evaluation networks on one set with the audit's schedule (fdd's own path:
:func:`fdd.models.architectures.build_architecture`, :func:`fdd.distillation.training.train_network`,
the protocol of :func:`fdd.fairness.audit.evaluation_protocol`, ``epochs + 1`` epochs, learning
rate x0.1 after epoch ``epochs // 2 + 1``), then tests each on the real test split in up to
three ways:

- ``eval``: :func:`fdd.fairness.audit.predict` (eval mode: batch norm's running statistics),
  what the audit reports;
- ``batch``: train-mode batch norm, i.e. statistics of each test batch (``--test-batch``
  images; a diagnostic, transductive);
- ``recal``: running statistics recomputed as the exact average over the *unaugmented*
  training set (momentum ``None``, one pass in train mode), then eval mode.

Only networks with batch norm get ``batch`` and ``recal``. It also prints the per-channel
mean and standard deviation of the training set and of the test images (the input of the
first batch-norm layer's convolution) and, for batch-norm networks, how far the first
layer's running statistics are from those of the test images.

Examples (CPU, 2 threads)::

    python benchmarks/bn_probe.py --set stratified-real --arch resnet18-bn resnet18 convnet --epochs 200
    python benchmarks/bn_probe.py --set data/synthetic/fairdd/synthetic.pt --bias background --arch resnet18-bn
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from fdd.config import parse_config
from fdd.datasets.containers import SyntheticSet
from fdd.datasets.prepare import prepare_dataset
from fdd.distillation.augment import DSAConfig
from fdd.distillation.baselines import real_baseline_set
from fdd.distillation.training import train_network
from fdd.fairness.audit import evaluation_protocol, predict
from fdd.fairness.metrics import fairness_report
from fdd.models.architectures import build_architecture

ROOT = Path(__file__).resolve().parents[1]


def batchnorms(net: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def predict_batch_stats(net: nn.Module, images: Tensor, *, batch_size: int) -> Tensor:
    """Predictions with train-mode batch norm (each test batch's own statistics), on a copy."""
    probe = copy.deepcopy(net).train()
    return torch.cat([probe(images[i : i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])


@torch.no_grad()
def recalibrated(net: nn.Module, images: Tensor, *, batch_size: int) -> nn.Module:
    """A copy whose running statistics are the exact average over ``images`` (unaugmented)."""
    probe = copy.deepcopy(net)
    for bn in batchnorms(probe):
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    probe.train()
    for i in range(0, len(images), batch_size):
        probe(images[i : i + batch_size])
    return probe.eval()


@torch.no_grad()
def first_bn_gap(net: nn.Module, test: Tensor) -> dict[str, float]:
    """Running mean/var of the first batch-norm layer against the statistics of the test images there."""
    bns = batchnorms(net)
    if not bns:
        return {}
    first = bns[0]
    seen: dict[str, Tensor] = {}
    hook = first.register_forward_hook(lambda m, inp, out: seen.setdefault("x", inp[0]))
    net.eval()
    net(test[:500])
    hook.remove()
    x = seen["x"]
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3))
    return {
        "running_mean_abs": float(first.running_mean.abs().mean()),
        "test_mean_abs": float(mean.abs().mean()),
        "running_var_mean": float(first.running_var.mean()),
        "test_var_mean": float(var.mean()),
        "var_ratio_median": float((first.running_var / var.clamp_min(1e-8)).median()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", default="stratified-real", help="stratified-real, random-real or a synthetic.pt")
    parser.add_argument("--dataset", default="cmnist")
    parser.add_argument("--bias", default="foreground")
    parser.add_argument("--arch", nargs="+", default=["resnet18-bn", "resnet18", "convnet"])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-limit", type=int, default=2000)
    parser.add_argument("--test-batch", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--root", default="data/raw")
    parser.add_argument(
        "--match-real-stats",
        action="store_true",
        help="first shift and scale each channel of the set to the real train split's mean and std",
    )
    parser.add_argument("--out", default=None, help="append one JSON line per architecture here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = parse_config(
        {
            "data": {"dataset": args.dataset, "bias": args.bias, "root": args.root, "test_limit": args.test_limit},
            "audit": {"epochs": args.epochs, "num_eval": 1, "seed": args.seed},
        }
    )
    prepared = prepare_dataset(config.data, workspace=ROOT)
    if args.set in ("stratified-real", "random-real"):
        synthetic = real_baseline_set(prepared.train, mode=args.set, ipc=args.ipc, seed=args.seed)
    else:
        synthetic = SyntheticSet.load(args.set)
    images, labels = synthetic.images.float(), synthetic.labels
    if args.match_real_stats:
        real = prepared.train.normalized("cpu")
        axes = (0, 2, 3)
        images = (images - images.mean(axes, keepdim=True)) / images.std(axes, keepdim=True)
        images = images * real.std(axes, keepdim=True) + real.mean(axes, keepdim=True)
    test = prepared.test
    test_images = test.normalized("cpu")
    print(
        f"set {args.set}: {tuple(images.shape)}; per-channel mean {images.mean((0, 2, 3)).tolist()} "
        f"std {images.std((0, 2, 3)).tolist()}, range [{images.min():.2f}, {images.max():.2f}]"
    )
    print(
        f"test ({len(test)} images): mean {test_images.mean((0, 2, 3)).tolist()} "
        f"std {test_images.std((0, 2, 3)).tolist()}"
    )

    def report(pred: Tensor) -> tuple[float, float]:
        r = fairness_report(
            pred.cpu(),
            test.labels,
            sensitive_features=test.groups,
            num_classes=test.num_classes,
            num_groups=test.num_groups,
        )
        return round(r.accuracy, 2), round(r.deo_m, 2)

    for arch in args.arch:
        protocol = evaluation_protocol(synthetic, config=config.audit, network=config.network, architecture=arch)
        dsa = DSAConfig(strategy=protocol.strategy) if protocol.augmentation == "dsa" else None
        seed = config.audit.seed * 1000
        net = build_architecture(
            arch, input_shape=test.image_shape, num_classes=test.num_classes, network=config.network, seed=seed
        )
        generator = torch.Generator().manual_seed(seed)
        start = time.time()
        train_network(
            net,
            images,
            labels,
            epochs=args.epochs + 1,
            lr=protocol.lr,
            momentum=config.audit.momentum,
            weight_decay=config.audit.weight_decay,
            batch_size=config.audit.batch_size,
            dsa=dsa,
            generator=generator,
            lr_decay_epoch=args.epochs // 2 + 1,
        )
        seconds = time.time() - start
        row: dict[str, object] = {"set": args.set, "dataset": f"{args.dataset}-{args.bias}", "arch": arch}
        row["match_real_stats"] = args.match_real_stats
        row.update(epochs=args.epochs, seed=args.seed, train_s=round(seconds), augmentation=protocol.augmentation)
        row["train_acc_eval"] = round(float((predict(net, images, batch_size=256) == labels).float().mean() * 100), 2)
        row["eval"] = report(predict(net, test_images, batch_size=args.test_batch))
        if batchnorms(net):
            row["batch"] = report(predict_batch_stats(net, test_images, batch_size=args.test_batch))
            row["recal"] = report(
                predict(recalibrated(net, images, batch_size=256), test_images, batch_size=args.test_batch)
            )
            row["first_bn"] = first_bn_gap(net, test_images)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as handle:
                handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
