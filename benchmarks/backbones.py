"""Every backbone x mode on one biased dataset: Acc / DEO_M / DEO_A over evaluations.

    python benchmarks/backbones.py --device cuda --data-root data/raw \\
        --iterations dm=300,dc=10,idc=10,cafe=10,mtt=200 --eval-epochs 300 --cuda-graph

Distils C-MNIST (foreground by default) at IPC 10 with each backbone (DM, DC, IDC, CAFE,
MTT) in each mode (vanilla, fairdd, cobra), using each backbone's published settings
(``fdd.distillation.backbones.RECOMMENDED``; ConvNet-3 width 128, DSA, init real) unless overridden,
and audits every synthetic set with ``--num-eval`` evaluations. Needs only torch,
torchvision, numpy, pandas and pydantic (no Prefect or DVC). After every cell it rewrites
``<out>/backbones_<device>.md`` and ``.csv`` atomically, so a run cut short keeps the
cells it finished. ``--iterations`` takes one number for every backbone or
``backbone=N`` pairs; ``--train-limit`` / ``--test-limit`` shrink the data for a CPU smoke run;
``--append`` adds to an existing table (several shorter runs, e.g. one per backbone).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fdd.config import AuditConfig, NetworkConfig, SynthesisConfig
from fdd.datasets.colored import build_colored
from fdd.datasets.containers import stratified_subset
from fdd.datasets.sources import load_raw
from fdd.distillation.backbones import RECOMMENDED
from fdd.distillation.run import synthesize
from fdd.fairness.audit import audit_synthetic
from fdd.files import atomic_write

RAW = {"cmnist": "mnist", "cfmnist": "fashion_mnist"}


def per_backbone(text: str | None, backbones: list[str], name: str) -> dict[str, int | None]:
    """'20' -> every backbone 20; 'dc=20,mtt=200' -> those, the rest None (the default)."""
    if text is None:
        return dict.fromkeys(backbones)
    if re.fullmatch(r"\d+", text):
        return dict.fromkeys(backbones, int(text))
    out: dict[str, int | None] = dict.fromkeys(backbones)
    for item in text.split(","):
        key, _, value = item.partition("=")
        if key not in RECOMMENDED or not value.isdigit():
            raise SystemExit(
                f"--{name}: expected N or backbone=N pairs with backbones {list(RECOMMENDED)}; got {item!r}"
            )
        out[key] = int(value)
    return out


def device_label(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def table(rows: list[dict]) -> str:
    """A GitHub markdown table (written by hand: pandas' to_markdown needs tabulate)."""
    frame = pd.DataFrame(rows)
    recommended_lr = frame["backbone"].map(lambda b: RECOMMENDED[b]["lr_img"])  # rows written before lr_img was kept
    lr_img = frame["lr_img"].fillna(recommended_lr) if "lr_img" in frame else recommended_lr
    show = pd.DataFrame(
        {
            "backbone": frame["backbone"],
            "mode": frame["mode"],
            "iterations": frame["iterations"],
            "lr_img": lr_img,
            "Acc": [f"{a:.2f}±{s:.2f}" for a, s in zip(frame["accuracy_mean"], frame["accuracy_std"])],
            "DEO_M": [f"{a:.2f}±{s:.2f}" for a, s in zip(frame["deo_m_mean"], frame["deo_m_std"])],
            "DEO_A": [f"{a:.2f}±{s:.2f}" for a, s in zip(frame["deo_a_mean"], frame["deo_a_std"])],
            "s/iteration": frame["s_per_iteration"].round(4),
            "synthesis s": frame["synthesis_s"].round(1),
            "audit s": frame["audit_s"].round(1),
        }
    )
    lines = ["| " + " | ".join(show.columns) + " |", "|" + "---|" * len(show.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in show.itertuples(index=False)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(RAW), default="cmnist")
    parser.add_argument("--bias", choices=["foreground", "background"], default="foreground")
    parser.add_argument("--shading", choices=["binary", "intensity"], default="binary")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--backbones", default="dm,dc,idc,cafe,mtt")
    parser.add_argument("--modes", default="vanilla,fairdd,cobra")
    parser.add_argument("--iterations", help="N for every backbone, or backbone=N pairs (default: RECOMMENDED)")
    parser.add_argument("--num-eval", type=int, default=5)
    parser.add_argument("--eval-epochs", type=int, default=1000)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch-real", type=int, help="real images per class per matching step (default: RECOMMENDED)")
    parser.add_argument("--lr-img", type=float, help="pixel learning rate for every cell (default: RECOMMENDED)")
    parser.add_argument("--train-limit", type=int, help="stratified subset of the train split (CPU smoke runs)")
    parser.add_argument("--test-limit", type=int, help="stratified subset of the test split")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data-root", default="data/raw")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--name", help="file stem (default: backbones_<device>)")
    parser.add_argument("--compile", action="store_true", help="synthesis.compile (DM)")
    parser.add_argument(
        "--cuda-graph",
        action="store_true",
        help="synthesis.cuda_graph: DM's cobra warm-up and DC/IDC/CAFE's inner loop as CUDA graphs",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a backbone setting, e.g. dc.inner_loop=10 or mtt.num_experts=2 (repeatable)",
    )
    parser.add_argument(
        "--append",
        action="store_true",
        help="keep the cells of an existing <name>.csv (same backbone/mode cells are replaced)",
    )
    parser.add_argument("--cache-dir", default="data/cache/experts", help="where MTT's expert trajectories are kept")
    args = parser.parse_args()
    backbones = args.backbones.split(",")
    unknown = [b for b in backbones if b not in RECOMMENDED]
    if unknown:
        raise SystemExit(f"--backbones: unknown {unknown}; known {list(RECOMMENDED)}")
    iterations = per_backbone(args.iterations, backbones, "iterations")
    sections: dict[str, dict] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if section not in ("dc", "idc", "cafe", "mtt") or not name or not value:
            raise SystemExit(f"--set: expected dc|idc|cafe|mtt.KEY=VALUE; got {item!r}")
        sections.setdefault(section, {})[name] = json.loads(value)

    raw = load_raw(RAW[args.dataset], root=args.data_root, download=False)
    splits = build_colored(raw, bias=args.bias, seed=0, shading=args.shading)
    train, test = splits.train, splits.test
    if args.train_limit:
        train = stratified_subset(train, size=args.train_limit, seed=args.seed)
    if args.test_limit:
        test = stratified_subset(test, size=args.test_limit, seed=args.seed)
    network = NetworkConfig(width=args.width)
    audit = AuditConfig(num_eval=args.num_eval, epochs=args.eval_epochs)
    machine = device_label(args.device)
    stem = args.name or "backbones_" + re.sub(r"[^a-z0-9]+", "_", machine.lower()).strip("_")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    if args.append and (out / f"{stem}.csv").exists():
        rows = pd.read_csv(out / f"{stem}.csv").to_dict("records")
    for backbone in backbones:
        for mode in args.modes.split(","):
            settings = dict(RECOMMENDED[backbone])
            if iterations[backbone] is not None:
                settings["iterations"] = iterations[backbone]
            if args.batch_real is not None:
                settings["batch_real"] = args.batch_real
            if args.lr_img is not None:
                settings["lr_img"] = args.lr_img
            n_iter = int(settings["iterations"])
            config = SynthesisConfig(
                backbone=backbone,
                modes=(mode,),
                ipc=args.ipc,
                log_every=max(n_iter // 5, 1),
                compile=args.compile,
                cuda_graph=args.cuda_graph,
                **sections,
                **settings,
            )
            start = time.perf_counter()
            result = synthesize(
                train,
                mode=mode,
                config=config,
                network=network,
                seed=args.seed,
                device=args.device,
                cache_dir=args.cache_dir,
                progress=lambda it, loss, b=backbone, m=mode, n=n_iter: print(
                    f"  {b}/{m} {it}/{n} loss {loss:.4f}", flush=True
                ),
            )
            synth_s = time.perf_counter() - start
            start = time.perf_counter()
            audited = audit_synthetic(result.synthetic, test, config=audit, network=network, device=args.device)
            audit_s = time.perf_counter() - start
            s = audited.summary
            rows = [r for r in rows if (r["backbone"], r["mode"]) != (backbone, mode)] + [
                {
                    "backbone": backbone,
                    "mode": mode,
                    "iterations": n_iter,
                    "lr_img": float(settings["lr_img"]),
                    "ipc": args.ipc,
                    "synthesis_s": synth_s,
                    "s_per_iteration": result.seconds_per_iteration,
                    "audit_s": audit_s,
                    **{f"{k}_{stat}": s[k][stat] for k in ("accuracy", "deo_m", "deo_a") for stat in ("mean", "std")},
                }
            ]
            print(rows[-1], flush=True)
            header = (
                f"# Backbones x modes: {args.dataset} {args.bias}, IPC {args.ipc}\n\n"
                f"Machine: {machine}, torch {torch.__version__}. ConvNet-3 width {args.width}, DSA, init real, "
                f"seed {args.seed}; each cell audited with {args.num_eval} evaluations of {args.eval_epochs} epochs "
                f"(mean ± std). Train images: {len(train)}, test images: {len(test)}. Settings per backbone: "
                f"`fdd.distillation.backbones.RECOMMENDED` with the iterations shown. s/iteration includes MTT's expert "
                f"training when its trajectories were not cached.\n\n"
                f"Last command: `python benchmarks/backbones.py {' '.join(sys.argv[1:])}`\n\n"
            )
            markdown = (header + table(rows) + "\n").encode()
            csv = pd.DataFrame(rows).to_csv(index=False).encode()
            atomic_write(out / f"{stem}.md", lambda h, data=markdown: h.write(data))
            atomic_write(out / f"{stem}.csv", lambda h, data=csv: h.write(data))
    print(f"wrote {out / stem}.md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
