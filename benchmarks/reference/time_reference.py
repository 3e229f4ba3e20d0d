"""Time the public COBRA reference code (github:mhmoslemi/COBRA, train_dm.py) unmodified.

The reference's ``main(args)`` is run in-process with its own argparse defaults plus
command-line flags (``--Iteration``, ``--num_eval``, ``--epoch_eval_train`` limit the run;
nothing in the reference is edited). Timing comes from wall-clock stamps taken by thin
wrappers around three functions the reference calls:

* ``train_dm.get_network``: called once at the start of every distillation iteration
  (and once per evaluation); the gap between consecutive calls, after a CUDA sync, is
  one full outer iteration (new net, cobra warm-up, 10 class matchings, pixel step).
* ``train_dm.evaluate_synset``: one evaluation (1500-epoch training + the two
  fairness test passes), synced.
* ``utils.epoch_Fairness_Metric``: its first call marks the end of the evaluation's
  training loop (so training time and test time are reported apart).

``train_dm.get_dataset`` is memoised (same arguments, same seed 30 re-applied), so the
colour-biased dataset is built once per process rather than once per configuration.

Usage: python time_reference.py --data-root DIR --out DIR [--dataset NAME] [--configs ...]
A config is ``mode:ipc:iterations`` (distillation timing, num_eval 0) or
``eval:ipc:epochs`` (one evaluation on the initial IPC synthetic set, Iteration 0).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import statistics
import sys
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
# the reference checkout: $COBRA_DIR, default .ref/COBRA at the repository root (git-ignored; never commit it)
REF = os.environ.get("COBRA_DIR") or os.path.join(os.path.dirname(os.path.dirname(HERE)), ".ref", "COBRA")

# scipy >= 1.x may drop the deprecated scipy.ndimage.interpolation alias that utils.py imports
try:  # pragma: no cover - depends on the installed scipy
    import scipy.ndimage.interpolation
except ImportError:  # pragma: no cover
    import scipy.ndimage

    shim = types.ModuleType("scipy.ndimage.interpolation")
    shim.rotate = scipy.ndimage.rotate
    sys.modules["scipy.ndimage.interpolation"] = shim

sys.path.insert(0, REF)
import numpy as np  # noqa: E402
import torch  # noqa: E402
import train_dm  # noqa: E402  (the reference's train_dm.py)
import utils  # noqa: E402  (the reference's utils.py)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


STAMPS: dict[str, list] = {"net": [], "eval": [], "fair": []}

_get_network = train_dm.get_network
_evaluate = train_dm.evaluate_synset
_fairness = utils.epoch_Fairness_Metric
_get_dataset = train_dm.get_dataset
_cache: dict = {}


def timed_get_network(*a, **k):
    sync()
    STAMPS["net"].append(time.perf_counter())
    return _get_network(*a, **k)


def timed_evaluate(*a, **k):
    sync()
    t0 = time.perf_counter()
    STAMPS["fair"].append(None)  # marker: first fairness call of this evaluation follows
    out = _evaluate(*a, **k)
    sync()
    STAMPS["eval"].append((t0, time.perf_counter(), out[2], out[3], out[4]))
    return out


def timed_fairness(*a, **k):
    sync()
    if STAMPS["fair"] and STAMPS["fair"][-1] is None:
        STAMPS["fair"][-1] = time.perf_counter()
    return _fairness(*a, **k)


def cached_get_dataset(dataset, data_path, *a, **k):
    key = (dataset, data_path, a, tuple(sorted(k.items())))
    if key not in _cache:
        t0 = time.perf_counter()
        _cache[key] = _get_dataset(dataset, data_path, *a, **k)
        print(f"[timer] dataset {dataset} built in {time.perf_counter() - t0:.1f} s", flush=True)
    else:  # the reference re-seeds to 30 inside get_dataset: do the same on a cache hit
        random.seed(30)
        np.random.seed(30)
        torch.manual_seed(30)
        torch.cuda.manual_seed_all(30)
    return _cache[key]


train_dm.get_network = timed_get_network
train_dm.evaluate_synset = timed_evaluate
utils.epoch_Fairness_Metric = timed_fairness
train_dm.get_dataset = cached_get_dataset


def run_reference(argv: list[str]) -> float:
    old = sys.argv
    sys.argv = ["train_dm.py", *argv]
    try:
        args = train_dm.parse_args()
    finally:
        sys.argv = old
    for v in STAMPS.values():
        v.clear()
    t0 = time.perf_counter()
    train_dm.set_seed(args.seed)
    train_dm.main(args)
    sync()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data-root", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--dataset", default=None)
    p.add_argument("--save-path", default="/tmp/cobra_ref_result")
    p.add_argument("--skip", type=int, default=2, help="first iterations left out of the per-iteration time")
    p.add_argument("--batch-real", type=int, default=600)
    p.add_argument(
        "--configs",
        nargs="+",
        default=[
            "cobra:10:30",
            "cobra:50:10",
            "vanilla:10:30",
            "fairdd:10:30",
            "vanilla:50:10",
            "fairdd:50:10",
            "eval:10:1500",
        ],
    )
    a = p.parse_args()
    dataset = a.dataset
    if dataset is None:
        fm = os.path.join(a.data_root, "FashionMNIST", "raw", "train-images-idx3-ubyte")
        dataset = "Colored_FashionMNIST_background" if os.path.exists(fm) else "Colored_MNIST_foreground"
    os.makedirs(a.out, exist_ok=True)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"[timer] torch {torch.__version__} on {device}; dataset {dataset}", flush=True)
    rows = []
    detail = []
    for spec in a.configs:
        mode, ipc, n = spec.split(":")
        ipc, n = int(ipc), int(n)
        common = [
            "--dataset",
            dataset,
            "--ipc",
            str(ipc),
            "--data_path",
            a.data_root,
            "--save_path",
            a.save_path,
            "--model",
            "ConvNet",
            "--eval_mode",
            "S",
            "--num_exp",
            "1",
            "--lr_img",
            "1.0",
            "--batch_real",
            str(a.batch_real),
        ]
        if mode == "eval":
            wall = run_reference(
                common + ["--mode", "vanilla", "--Iteration", "0", "--num_eval", "1", "--epoch_eval_train", str(n)]
            )
            t0, t1, acc, deo_m, deo_a = STAMPS["eval"][0]
            tf = STAMPS["fair"][0]
            rows.append(("evaluation", ipc, f"{n}_epochs", t1 - t0))
            rows.append(("evaluation_train", ipc, f"{n}_epochs", tf - t0))
            rows.append(("evaluation_test", ipc, f"{n}_epochs", t1 - tf))
            detail.append(
                f"eval ipc={ipc} epochs={n}: total {t1 - t0:.2f} s (train {tf - t0:.2f} s, "
                f"test passes {t1 - tf:.2f} s); acc {acc} DEO_M {deo_m} DEO_A {deo_a}; wall {wall:.1f} s"
            )
        else:
            wall = run_reference(common + ["--mode", mode, "--Iteration", str(n), "--num_eval", "0"])
            stamps = STAMPS["net"]  # one per iteration (it = 0..n): n + 1 calls, n gaps
            gaps = [b - c for b, c in zip(stamps[1:], stamps[:-1])]
            # the last gap also holds the reference's end-of-run block at it == Iteration
            # (evaluation loop with num_eval 0, visualisation PNG): leave it out
            gaps = gaps[:-1] if len(gaps) > 1 else gaps
            skipped = a.skip if len(gaps) > a.skip else 0
            used = gaps[skipped:]
            per_it = statistics.mean(used)
            rows.append(("iteration", ipc, mode, per_it))
            rows.append(("iteration_median", ipc, mode, statistics.median(used)))
            detail.append(
                f"{mode} ipc={ipc}: {len(stamps)} iterations stamped, mean {per_it:.4f} s/it over "
                f"{len(used)} (first {skipped} skipped: {[round(g, 3) for g in gaps[:skipped]]}), "
                f"median {statistics.median(used):.4f}, min {min(used):.4f}, max {max(used):.4f}; wall {wall:.1f} s"
            )
        print("[timer] " + detail[-1], flush=True)
        with open(os.path.join(a.out, "reference_times.csv"), "w", newline="") as f:  # rewritten after each config
            w = csv.writer(f)
            w.writerow(["what", "ipc", "mode", "reference_s"])
            for r in rows:
                w.writerow([r[0], r[1], r[2], f"{r[3]:.6f}"])
        with open(os.path.join(a.out, "reference_times.log"), "w") as f:
            f.write(f"torch {torch.__version__}; device {device}; dataset {dataset}; batch_real {a.batch_real}\n")
            f.write("\n".join(detail) + "\n")


if __name__ == "__main__":
    main()
