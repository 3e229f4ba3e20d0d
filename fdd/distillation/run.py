"""Running a backbone to the end: checkpoints, resume, stop signals and progress.

:func:`synthesize` builds the synthesizer of ``config.backbone``
(:func:`fdd.distillation.backbones.build_synthesizer`) and drives its
:meth:`~fdd.distillation.backbones.Backbone.step` for ``config.iterations`` iterations.
"""

from __future__ import annotations

import hashlib
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch

from fdd.config import NetworkConfig, SynthesisConfig
from fdd.datasets.containers import GroupedImages, atomic_save
from fdd.distillation.backbones import build_synthesizer
from fdd.distillation.synthesis import ProgressCallback, SynthesisResult

__all__ = ["SynthesisInterrupted", "synthesize"]


def _fingerprint(train: GroupedImages, mode: str, config: SynthesisConfig, network: NetworkConfig, seed: int) -> str:
    """What a checkpoint must match to be resumed (settings that change the result)."""
    settings = config.model_dump(mode="json", exclude={"log_every", "checkpoint_every", "modes"})
    return hashlib.sha256(
        json.dumps(
            {"train": train.digest(), "mode": mode, "seed": seed, "synthesis": settings,
             "network": network.model_dump(mode="json")},
            sort_keys=True,
        ).encode()
    ).hexdigest()


class _StopRequest:
    """Turns SIGTERM / SIGINT into a flag the loop checks after each iteration."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: object) -> None:
        self.signal = signum

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class SynthesisInterrupted(RuntimeError):
    """Raised after a checkpoint was saved because SIGTERM or SIGINT arrived."""


def synthesize(
    train: GroupedImages,
    *,
    mode: str,
    config: SynthesisConfig,
    network: NetworkConfig,
    seed: int,
    device: torch.device | str = "cpu",
    provenance: dict | None = None,
    progress: ProgressCallback | None = None,
    checkpoint: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> SynthesisResult:
    """Distil ``train`` into ``config.ipc`` synthetic images per class with ``config.backbone`` in ``mode``.

    Parameters are those of :class:`Synthesizer`, plus

    provenance : dict, optional
        Recorded in the returned :class:`SyntheticSet` (config and data hashes).
    progress : callable(iteration, loss), optional
        Called every ``config.log_every`` iterations and at the end.
    checkpoint : path, optional
        Where to keep a resumable checkpoint (written atomically every
        ``config.checkpoint_every`` iterations and when SIGTERM/SIGINT arrives). If it
        exists and was made by the same data, mode, seed and settings, the run resumes
        from it and ends with the same result as an uninterrupted run (bit for bit on
        the CPU with the same number of threads, where the kernels are deterministic). It is removed when the run ends.
    cache_dir : path, optional
        Where a backbone keeps reusable artifacts between runs (MTT's expert trajectories).
    """
    loop = build_synthesizer(
        train, mode=mode, config=config, network=network, seed=seed, device=device, cache_dir=cache_dir
    )
    losses = torch.zeros(config.iterations, device=loop.device)
    fingerprint = _fingerprint(train, mode, config, network, seed) if checkpoint is not None else ""
    if checkpoint is not None and Path(checkpoint).exists():
        try:
            saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001  (a damaged checkpoint is never used; the run starts over)
            saved = None
        if saved is not None and saved.get("fingerprint") == fingerprint and saved["state"]["iteration"] <= config.iterations:
            loop.load_state_dict(saved["state"])
            losses[: loop.iteration] = saved["losses"].to(loop.device)

    def save_checkpoint() -> None:
        if checkpoint is not None:
            atomic_save(
                {"fingerprint": fingerprint, "state": loop.state_dict(), "losses": losses[: loop.iteration].cpu()},
                checkpoint,
            )

    start = time.perf_counter()
    first = loop.iteration
    with _StopRequest() as stop:
        for it in range(first, config.iterations):
            losses[it] = loop.step()
            if progress is not None and ((it + 1) % config.log_every == 0 or it + 1 == config.iterations):
                progress(it + 1, float(losses[it]))
            if stop.signal is not None:
                save_checkpoint()
                raise SynthesisInterrupted(
                    f"stopped by signal {stop.signal} after iteration {it + 1}; checkpoint saved to {checkpoint}"
                )
            if config.checkpoint_every and (it + 1) % config.checkpoint_every == 0 and it + 1 < config.iterations:
                save_checkpoint()
    if loop.device.type == "cuda":
        torch.cuda.synchronize(loop.device)
    seconds = time.perf_counter() - start
    result = SynthesisResult(
        synthetic=loop.synthetic_set(provenance),
        losses=losses.cpu().tolist(),
        seconds=seconds,
        seconds_per_iteration=seconds / max(config.iterations - first, 1),
    )
    if checkpoint is not None:
        Path(checkpoint).unlink(missing_ok=True)
    return result
