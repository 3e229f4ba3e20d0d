"""Running a backbone to the end: checkpoints, resume, stop signals and progress.

:func:`synthesize` builds the synthesizer of ``config.backbone``
(:func:`fdd.distillation.backbones.build_synthesizer`) and drives its
:meth:`~fdd.distillation.backbones.Backbone.step` for ``config.iterations`` iterations.
It also makes the baselines' sets (docs/evaluation.md): the real-image baselines of
:data:`fdd.config.REAL_SET_MODES` without any iteration (:mod:`fdd.distillation.baselines`),
and a mode of :data:`fdd.config.DISTILLED_AS` as the mode it names (``vanilla-gdro``: the
vanilla set, with each image's starting group).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fdd.config import DISTILLED_AS, GROUP_MODES, REAL_SET_MODES, NetworkConfig, SynthesisConfig
from fdd.datasets.containers import GroupedImages
from fdd.distillation.backbones import build_synthesizer
from fdd.distillation.baselines import real_baseline_set
from fdd.distillation.synthesis import ProgressCallback, SynthesisResult, check_group_labels
from fdd.files import atomic_write_bytes

__all__ = [
    "CheckpointDiscardedWarning",
    "SynthesisInterrupted",
    "checkpoint_digest_path",
    "discard_checkpoint",
    "read_checkpoint",
    "synthesize",
    "write_checkpoint",
]

ERR_NO_START_GROUPS = (
    "mode {mode!r} records the group of the real image each synthetic image starts from, but this run started "
    "from noise (synthesis.init 'noise'); use init 'real', 'stratified' or 'barycenter'"
)
ERR_CHECKPOINT_DISCARDED = "discarding checkpoint {path}: {reason}; the synthesis starts over"
#: suffix of the integrity record written beside a checkpoint (``sha256sum`` format)
CHECKPOINT_DIGEST_SUFFIX = ".sha256"


class CheckpointDiscardedWarning(UserWarning):
    """A checkpoint failed its integrity or sanity checks and was removed; the run starts over."""


def checkpoint_digest_path(path: str | Path) -> Path:
    """The integrity record of the checkpoint at ``path``: ``<path>.sha256``."""
    path = Path(path)
    return path.with_name(path.name + CHECKPOINT_DIGEST_SUFFIX)


def write_checkpoint(payload: dict, path: str | Path) -> None:
    """Save ``payload`` with :func:`torch.save` to ``path`` and its SHA-256 to ``<path>.sha256``.

    Both files are written atomically (temporary file, fsync, rename), the checkpoint first:
    a crash between the two leaves a checkpoint whose record does not match, which
    :func:`read_checkpoint` discards (the run loses its progress, never its correctness).
    """
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    atomic_write_bytes(path, data)
    atomic_write_bytes(
        checkpoint_digest_path(path), f"{hashlib.sha256(data).hexdigest()}  {Path(path).name}\n".encode()
    )


def discard_checkpoint(path: str | Path, reason: str) -> None:
    """Remove the checkpoint at ``path`` and its record, warning with :data:`ERR_CHECKPOINT_DISCARDED`."""
    warnings.warn(ERR_CHECKPOINT_DISCARDED.format(path=path, reason=reason), CheckpointDiscardedWarning, stacklevel=3)
    Path(path).unlink(missing_ok=True)
    checkpoint_digest_path(path).unlink(missing_ok=True)


def _nonfinite(value: object) -> int:
    """Count of NaN / Inf entries in the floating-point tensors nested in ``value``."""
    if isinstance(value, Tensor):
        return int((~torch.isfinite(value)).sum()) if value.is_floating_point() else 0
    if isinstance(value, dict):
        return sum(_nonfinite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_nonfinite(v) for v in value)
    if isinstance(value, float):
        return int(not math.isfinite(value))
    return 0


def read_checkpoint(
    path: str | Path, *, fingerprint: str, iterations: int, image_shape: tuple[int, ...]
) -> dict | None:
    """The checkpoint at ``path`` if it can be trusted and resumed, else None.

    A checkpoint is discarded (removed, with a :class:`CheckpointDiscardedWarning` naming
    it) when its SHA-256 does not match ``<path>.sha256`` (bit flips, truncation, a missing
    record), when it does not load, when it was made by other data or settings
    (``fingerprint``), when its iteration exceeds ``iterations``, when its synthetic images
    do not have ``image_shape``, or when it holds NaN or Inf values. None when ``path``
    does not exist.
    """
    path = Path(path)
    if not path.exists():
        checkpoint_digest_path(path).unlink(missing_ok=True)
        return None
    record = checkpoint_digest_path(path)
    try:
        expected = record.read_text().split()[0]
    except (OSError, IndexError, UnicodeDecodeError):
        discard_checkpoint(path, f"its integrity record {record.name} is missing or unreadable")
        return None
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != expected:
        discard_checkpoint(path, f"its content does not match the SHA-256 in {record.name} (damaged or modified)")
        return None
    try:
        saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is discarded, never used
        discard_checkpoint(path, f"it does not load ({type(exc).__name__})")
        return None
    state = saved.get("state") if isinstance(saved, dict) else None
    if not isinstance(state, dict) or not isinstance(saved.get("losses"), Tensor) or "syn_images" not in state:
        discard_checkpoint(path, "it is not an fdd synthesis checkpoint (keys fingerprint, state, losses)")
        return None
    if saved.get("fingerprint") != fingerprint:
        discard_checkpoint(path, "it was made with other data, mode, seed or synthesis settings")
        return None
    if not isinstance(state.get("iteration"), int) or not 0 <= state["iteration"] <= iterations:
        discard_checkpoint(path, f"its iteration {state.get('iteration')!r} is outside 0..{iterations}")
        return None
    shape = tuple(state["syn_images"].shape) if isinstance(state["syn_images"], Tensor) else None
    if shape != tuple(image_shape):
        discard_checkpoint(path, f"its synthetic images have shape {shape}, this run's have {tuple(image_shape)}")
        return None
    if saved["losses"].shape != (state["iteration"],):
        discard_checkpoint(path, f"it holds {saved['losses'].numel()} losses for {state['iteration']} iterations")
        return None
    bad = _nonfinite(saved)
    if bad:
        discard_checkpoint(path, f"it holds {bad} NaN or Inf values")
        return None
    return saved


def _fingerprint(train: GroupedImages, mode: str, config: SynthesisConfig, network: NetworkConfig, seed: int) -> str:
    """What a checkpoint must match to be resumed (settings that change the result)."""
    settings = config.model_dump(mode="json", exclude={"log_every", "checkpoint_every", "modes"})
    return hashlib.sha256(
        json.dumps(
            {
                "train": train.digest(),
                "mode": mode,
                "seed": seed,
                "synthesis": settings,
                "network": network.model_dump(mode="json"),
            },
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
        the CPU with the same number of threads, where the kernels are deterministic). A SHA-256
        record ``<checkpoint>.sha256`` is written beside it; a checkpoint that fails that check,
        does not load, holds NaN or Inf or does not fit this run is discarded with a
        :class:`CheckpointDiscardedWarning` naming it (:func:`read_checkpoint`), and the run starts
        over. Both files are removed when the run ends.
    cache_dir : path, optional
        Where a backbone keeps reusable artifacts between runs (MTT's expert trajectories).

    A real-image baseline (:data:`fdd.config.REAL_SET_MODES`) runs no iteration: its set is
    chosen at once (:func:`fdd.distillation.baselines.real_baseline_set`; no losses, no
    checkpoint). A mode of :data:`fdd.config.DISTILLED_AS` distils as the mode it names and
    keeps each image's starting group in ``SyntheticSet.groups``.
    """
    if mode in REAL_SET_MODES:
        start = time.perf_counter()
        synthetic = real_baseline_set(train, mode=mode, ipc=config.ipc, seed=seed, provenance=provenance)
        return SynthesisResult(synthetic=synthetic, losses=[], seconds=time.perf_counter() - start)
    if mode in GROUP_MODES:
        check_group_labels(train, mode)
    distilled = DISTILLED_AS.get(mode, mode)
    loop = build_synthesizer(
        train, mode=distilled, config=config, network=network, seed=seed, device=device, cache_dir=cache_dir
    )
    losses = torch.zeros(config.iterations, device=loop.device)
    fingerprint = _fingerprint(train, mode, config, network, seed) if checkpoint is not None else ""
    if checkpoint is not None:
        saved = read_checkpoint(
            checkpoint, fingerprint=fingerprint, iterations=config.iterations, image_shape=tuple(loop.syn_images.shape)
        )
        if saved is not None:
            try:
                loop.load_state_dict(saved["state"])
                losses[: loop.iteration] = saved["losses"].to(loop.device)
            except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
                discard_checkpoint(checkpoint, f"its state does not fit this run ({type(exc).__name__}: {exc})")
                loop = build_synthesizer(  # a partly loaded state is never used: a fresh start
                    train, mode=distilled, config=config, network=network, seed=seed, device=device, cache_dir=cache_dir
                )
                losses.zero_()

    def save_checkpoint() -> None:
        if checkpoint is not None:
            write_checkpoint(
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
    synthetic = loop.synthetic_set(provenance)
    if distilled != mode:  # e.g. vanilla-gdro: the vanilla set, named after its mode, with its starting groups
        groups = getattr(loop, "syn_groups", None)
        if groups is None:
            raise ValueError(ERR_NO_START_GROUPS.format(mode=mode))
        synthetic = dataclasses.replace(
            synthetic, provenance={**synthetic.provenance, "mode": mode, "distilled_as": distilled}, groups=groups
        )
    result = SynthesisResult(
        synthetic=synthetic,
        losses=losses.cpu().tolist(),
        seconds=seconds,
        seconds_per_iteration=seconds / max(config.iterations - first, 1),
    )
    if checkpoint is not None:
        Path(checkpoint).unlink(missing_ok=True)
        checkpoint_digest_path(checkpoint).unlink(missing_ok=True)
    return result
