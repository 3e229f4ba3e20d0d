"""Synthesis checkpoints carry a SHA-256 record; a damaged or unfit one is discarded with a
warning naming it and the run starts over, ending with the uninterrupted result."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from fdd.distillation import run as R
from fdd.distillation import synthesis as S
from fdd.distillation.backbones import build_synthesizer
from fdd.distillation.run import (
    CheckpointDiscardedWarning,
    checkpoint_digest_path,
    synthesize,
    write_checkpoint,
)
from tests.test_synthesis import TINY_NET, tiny_config, tiny_data

ITERATIONS, DONE = 6, 3


def _run(train, config, checkpoint: Path | None, monkeypatch: pytest.MonkeyPatch) -> tuple[torch.Tensor, int]:
    steps: list[int] = []
    original = S.DMSynthesizer.step
    monkeypatch.setattr(S.DMSynthesizer, "step", lambda self: steps.append(1) or original(self))
    result = synthesize(train, mode="vanilla", config=config, network=TINY_NET, seed=0, checkpoint=checkpoint)
    monkeypatch.setattr(S.DMSynthesizer, "step", original)
    return result.synthetic.images, len(steps)


def _checkpoint(train, config, path: Path) -> dict:
    """A genuine checkpoint after DONE iterations, written as synthesize writes it."""
    loop = build_synthesizer(train, mode="vanilla", config=config, network=TINY_NET, seed=0, device="cpu")
    losses = torch.stack([loop.step() for _ in range(DONE)])
    payload = {
        "fingerprint": R._fingerprint(train, "vanilla", config, TINY_NET, 0),
        "state": loop.state_dict(),
        "losses": losses,
    }
    write_checkpoint(payload, path)
    return payload


def _float_offset(data: bytes, tensor: torch.Tensor) -> int:
    offset = data.find(tensor.numpy().tobytes())
    assert offset > 0, "the tensor's bytes are stored uncompressed in the checkpoint"
    return offset


def _flip(path: Path, payload: dict, *, nan: bool) -> None:
    data = bytearray(path.read_bytes())
    at = _float_offset(bytes(data), payload["state"]["syn_images"])
    if nan:  # exponent bits all ones (little-endian float32: byte 3 holds sign + 7 exponent bits)
        for k in range(5):
            data[at + 4 * k + 3] |= 0x7F
            data[at + 4 * k + 2] |= 0x80
    else:  # lowest mantissa bit: the value stays finite, only slightly different
        data[at] ^= 0x01
    path.write_bytes(bytes(data))


def _rerecord(path: Path) -> None:
    """Write a record matching the (damaged) content, as a buggy or hostile writer would."""
    checkpoint_digest_path(path).write_text(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n")


CASES = {
    "nan-bit-flips": "does not match the SHA-256",
    "low-bit-flip": "does not match the SHA-256",
    "truncated": "does not match the SHA-256",
    "no-record": "integrity record checkpoint.pt.sha256 is missing",
    "nan-with-matching-record": "NaN or Inf",
    "wrong-shape": "have shape (6, 3, 8, 8), this run's have (3, 3, 8, 8)",
    "not-a-checkpoint": "it does not load",
    "other-settings": "other data, mode, seed or synthesis settings",
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_checkpoint_is_discarded_with_a_warning_and_the_run_starts_over(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train = tiny_data()
    config = tiny_config(ipc=1, iterations=ITERATIONS, checkpoint_every=2)
    expected, _ = _run(train, config, None, monkeypatch)
    path = tmp_path / "checkpoint.pt"
    if case == "wrong-shape":
        _checkpoint(train, tiny_config(ipc=2, iterations=ITERATIONS, checkpoint_every=2), path)
        other = torch.load(path, weights_only=True)
        other["fingerprint"] = R._fingerprint(train, "vanilla", config, TINY_NET, 0)  # same settings, wrong tensor
        write_checkpoint(other, path)
    elif case == "other-settings":
        _checkpoint(train, tiny_config(ipc=1, iterations=ITERATIONS, lr_img=0.5), path)
    else:
        payload = _checkpoint(train, config, path)
        if case in ("nan-bit-flips", "nan-with-matching-record", "low-bit-flip"):
            _flip(path, payload, nan=case != "low-bit-flip")
            if case == "nan-with-matching-record":
                _rerecord(path)
        elif case == "truncated":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        elif case == "no-record":
            checkpoint_digest_path(path).unlink()
        elif case == "not-a-checkpoint":
            path.write_bytes(b"PK\x03\x04 not a zip")
            _rerecord(path)
    with pytest.warns(CheckpointDiscardedWarning) as caught:
        images, steps = _run(train, config, path, monkeypatch)
    message = str(caught[0].message)
    assert str(path) in message and CASES[case] in message, message
    assert steps == ITERATIONS  # started over
    assert torch.equal(images, expected)  # the result of an uninterrupted run, not a silently different set
    assert not path.exists() and not checkpoint_digest_path(path).exists()


def test_good_checkpoint_resumes_and_records_are_removed_at_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recwarn: pytest.WarningsRecorder
) -> None:
    train = tiny_data()
    config = tiny_config(ipc=1, iterations=ITERATIONS, checkpoint_every=2)
    expected, _ = _run(train, config, None, monkeypatch)
    path = tmp_path / "checkpoint.pt"
    _checkpoint(train, config, path)
    record = checkpoint_digest_path(path).read_text()
    assert record == f"{hashlib.sha256(path.read_bytes()).hexdigest()}  checkpoint.pt\n"  # sha256sum format
    images, steps = _run(train, config, path, monkeypatch)
    assert steps == ITERATIONS - DONE and torch.equal(images, expected)
    assert not path.exists() and not checkpoint_digest_path(path).exists()
    assert not [w for w in recwarn if issubclass(w.category, CheckpointDiscardedWarning)]
