"""Counted FLOPs and bytes of one step, and how far a measured time is from the device's roofline.

    from benchmarks.roofline import count_step, peak_for, roofline
    counts = count_step(step)                       # runs step() once, eagerly, under the counters
    peak = peak_for("NVIDIA H200", "tf32")          # or Peak(...) from --peak-tflops / --peak-gbps
    print(roofline(counts, peak, measured_s=0.016).line())

What is counted (never estimated from shapes by hand):

- **FLOPs** by :class:`torch.utils.flop_counter.FlopCounterMode`: the matrix products and
  convolutions of the forward and the backward passes as the step runs them (PyTorch's
  formulas: ``2 * N * Cout * Cin * k * k * Hout * Wout`` per convolution forward, each of the
  input and weight gradients the same again when needed; elementwise work is not counted,
  as on a tensor-core roofline).
- **Bytes** by :class:`ByteCounter`, a :class:`torch.utils._python_dispatch.TorchDispatchMode`
  that sees every aten op executed. ``bytes_upper`` sums, per op, the bytes of its tensor
  inputs read and of its outputs written: the traffic of the step run unfused, one kernel per
  aten op, nothing kept in cache between kernels, so an **upper bound** of the memory traffic of
  that eager step (a fused or captured step moves less). ``bytes_lower`` counts every distinct
  buffer once (each fresh output written once, each buffer that existed before the step read
  once): the **lower bound** of a perfectly fused step whose buffers all cross the device
  memory once. Views and other ops that move no data (``view``, ``expand``, ``as_strided``,
  ``detach``, ``_unsafe_view``, ``empty``...) count zero bytes; a strided input counts the
  elements its strides reach (an expanded tensor is read once, not once per repeat).

A CUDA graph replay or a compiled graph runs kernels these modes cannot see: count an eager
step of the same configuration (same shapes, precision and memory format) instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

ERR_PEAK = "{what} must be a positive number; got {value!r}"
ERR_DTYPE = "compute dtype must be one of {allowed}; got {value!r}"

aten = torch.ops.aten

#: Ops that return no data of their own or only read metadata: no bytes (views are found by schema).
NO_TRAFFIC = {
    aten._unsafe_view.default,
    aten.lift_fresh.default,
    aten.empty.memory_format,
    aten.empty_like.default,
    aten.empty_strided.default,
    aten.new_empty.default,
    aten.new_empty_strided.default,
    aten.resize_.default,
    aten.is_contiguous.default,
    aten.is_contiguous.memory_format,
    aten.is_strides_like_format.default,
    aten.is_non_overlapping_and_dense.default,
    aten.size.default,
    aten.sym_size.default,
    aten.stride.default,
    aten.sym_stride.default,
    aten.storage_offset.default,
    aten.sym_storage_offset.default,
    aten.numel.default,
    aten.sym_numel.default,
    aten.dim.default,
    aten.set_.source_Storage_storage_offset,
}
#: In-place ops that overwrite ``self`` without reading it.
WRITE_ONLY_SELF = {"copy_", "fill_", "zero_", "uniform_", "normal_", "bernoulli_", "random_", "exponential_"}

COMPUTE_DTYPES = ("bf16", "tf32", "fp32")

#: Peak dense throughput (FLOP/s, no sparsity) per compute dtype and peak HBM bandwidth
#: (bytes/s), keyed by a substring of ``torch.cuda.get_device_name()``; first match wins.
#: Sources: NVIDIA H100 Tensor Core GPU datasheet (H100 SXM: BF16 1979 / TF32 989 TFLOPS
#: "with sparsity", i.e. 989 / 494 dense; FP32 67 TFLOPS; HBM3 3.35 TB/s) and NVIDIA H200
#: Tensor Core GPU datasheet (H200 SXM: the same FLOPS; HBM3e 4.8 TB/s). The SXM H100
#: reports itself as "NVIDIA H100 80GB HBM3"; the PCIe and NVL parts (lower peaks) are not
#: listed (a name with a word of :data:`UNLISTED_PARTS` matches no entry), so they need
#: --peak-tflops / --peak-gbps.
PEAKS: tuple[tuple[str, str, dict[str, float], float], ...] = (
    ("H200", "H200 SXM (NVIDIA H200 datasheet)", {"bf16": 989e12, "tf32": 494e12, "fp32": 67e12}, 4.8e12),
    ("H100 80GB HBM3", "H100 SXM (NVIDIA H100 datasheet)", {"bf16": 989e12, "tf32": 494e12, "fp32": 67e12}, 3.35e12),
    ("H100 SXM", "H100 SXM (NVIDIA H100 datasheet)", {"bf16": 989e12, "tf32": 494e12, "fp32": 67e12}, 3.35e12),
)

UNLISTED_PARTS = ("PCIe", "NVL")


def _reached_bytes(t: torch.Tensor) -> int:
    """Bytes a kernel must touch to read or write ``t``: the elements its strides reach."""
    n = t.numel()
    if n == 0:
        return 0
    if t.layout != torch.strided:
        return n * t.element_size()
    span = 1 + sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()))
    return min(n, span) * t.element_size()


def _tensors(value: Any) -> list[torch.Tensor]:
    return [x for x in tree_flatten(value)[0] if isinstance(x, torch.Tensor)]


def _buffer(t: torch.Tensor) -> tuple[str, int]:
    return (str(t.device), t.untyped_storage().data_ptr())


class ByteCounter(TorchDispatchMode):
    """Sums the bytes read and written per aten op (``upper``) and per distinct buffer (``lower``).

    See the module docstring for what the two bounds mean. ``ops`` counts the ops that
    moved data; ``by_op`` holds the upper-bound bytes per op name.
    """

    def __init__(self) -> None:
        super().__init__()
        self.upper = 0
        self.lower = 0
        self.ops = 0
        self.by_op: dict[str, int] = {}
        self._seen: set[tuple[str, int]] = set()

    def _touch(self, t: torch.Tensor, *, fresh: bool) -> None:
        key = _buffer(t)
        if fresh or key not in self._seen:
            self._seen.add(key)
            self.lower += _reached_bytes(t)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not isinstance(func, torch._ops.OpOverload) or func in NO_TRAFFIC or func.is_view:
            return out
        schema = func._schema
        reads: list[torch.Tensor] = []
        writes: list[torch.Tensor] = []
        for i, argument in enumerate(schema.arguments):
            value = args[i] if i < len(args) and not argument.kwarg_only else kwargs.get(argument.name)
            tensors = _tensors(value)
            if not tensors:
                continue
            written = argument.alias_info is not None and argument.alias_info.is_write
            if written:
                writes += tensors
            write_only = argument.is_out or (i == 0 and func._overloadpacket.__name__ in WRITE_ONLY_SELF)
            if not (written and write_only):
                reads += tensors
        returns = out if isinstance(out, tuple) else (out,)
        fresh: list[torch.Tensor] = []
        for position, value in enumerate(returns):
            declared = schema.returns[position] if position < len(schema.returns) else None
            if declared is None or declared.alias_info is None:  # a new buffer, not an alias of an argument
                fresh += _tensors(value)
        moved = sum(_reached_bytes(t) for t in reads) + sum(_reached_bytes(t) for t in writes + fresh)
        if moved:
            self.ops += 1
            self.upper += moved
            name = str(func._overloadpacket.__name__)
            self.by_op[name] = self.by_op.get(name, 0) + moved
        for t in reads + writes:
            self._touch(t, fresh=False)
        for t in fresh:
            self._touch(t, fresh=True)
        return out


@dataclass(frozen=True)
class Counts:
    """What one counted step did: FLOPs and bytes (upper and lower bound), per op name too."""

    flops: int
    bytes_upper: int
    bytes_lower: int
    ops: int
    flops_by_op: dict[str, int]
    bytes_by_op: dict[str, int]

    def scaled(self, factor: float) -> Counts:
        """These counts times ``factor`` (e.g. ``1 / epochs`` for a per-epoch figure)."""
        return Counts(
            flops=round(self.flops * factor),
            bytes_upper=round(self.bytes_upper * factor),
            bytes_lower=round(self.bytes_lower * factor),
            ops=round(self.ops * factor),
            flops_by_op={k: round(v * factor) for k, v in self.flops_by_op.items()},
            bytes_by_op={k: round(v * factor) for k, v in self.bytes_by_op.items()},
        )


def count_step(fn: Callable[[], Any]) -> Counts:
    """Run ``fn()`` once under the FLOP and byte counters and return what it did.

    ``fn`` must run eagerly (no CUDA graph replay, no compiled graph): the counters see
    aten ops as they are dispatched, forward and backward (autograd's device threads
    inherit the modes).
    """
    flop_mode = FlopCounterMode(display=False)
    bytes_mode = ByteCounter()
    with flop_mode, bytes_mode:  # the byte counter is innermost: it sees ops before any decomposition
        fn()
    flops_by_op: dict[str, int] = {}
    for op, count in flop_mode.get_flop_counts().get("Global", {}).items():
        name = str(getattr(op, "__name__", op))
        flops_by_op[name] = flops_by_op.get(name, 0) + int(count)
    return Counts(
        flops=int(flop_mode.get_total_flops()),
        bytes_upper=bytes_mode.upper,
        bytes_lower=bytes_mode.lower,
        ops=bytes_mode.ops,
        flops_by_op=flops_by_op,
        bytes_by_op=dict(bytes_mode.by_op),
    )


@dataclass(frozen=True)
class Peak:
    """A device's peak: FLOP/s for the compute dtype in use and memory bandwidth in bytes/s."""

    flops_per_s: float
    bytes_per_s: float
    dtype: str
    source: str

    def __post_init__(self) -> None:
        for what, value in (("peak FLOP/s", self.flops_per_s), ("peak bytes/s", self.bytes_per_s)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(ERR_PEAK.format(what=what, value=value))

    def describe(self) -> str:
        return f"{self.flops_per_s / 1e12:g} TFLOP/s {self.dtype}, {self.bytes_per_s / 1e9:g} GB/s ({self.source})"


def compute_dtype(precision: str, device: torch.device) -> str:
    """The dtype whose peak applies: ``bf16`` under bf16 autocast; for fp32 models on CUDA
    ``tf32`` when cuDNN may use TF32 tensor cores for convolutions
    (``torch.backends.cudnn.allow_tf32``, on by default), else ``fp32``."""
    if precision == "bf16":
        return "bf16"
    if device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "fp32"


def peak_for(device_name: str, dtype: str, *, tflops: float | None = None, gbps: float | None = None) -> Peak | None:
    """The peak of ``device_name`` for ``dtype`` from :data:`PEAKS`, with either number
    replaced by ``tflops`` (TFLOP/s) / ``gbps`` (GB/s) when given; ``None`` when the device is
    not in the table and not both numbers are given."""
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(ERR_DTYPE.format(allowed=COMPUTE_DTYPES, value=dtype))
    listed = not any(part in device_name for part in UNLISTED_PARTS)
    entry = next((e for e in PEAKS if e[0] in device_name), None) if listed else None
    if entry is None and (tflops is None or gbps is None):
        return None
    flops = tflops * 1e12 if tflops is not None else entry[2][dtype]  # type: ignore[index]
    bandwidth = gbps * 1e9 if gbps is not None else entry[3]  # type: ignore[index]
    parts = [] if entry is None else [entry[1]]
    if tflops is not None:
        parts.append("--peak-tflops")
    if gbps is not None:
        parts.append("--peak-gbps")
    return Peak(flops_per_s=flops, bytes_per_s=bandwidth, dtype=dtype, source=" + ".join(parts))


@dataclass(frozen=True)
class Roofline:
    """The time ``counts`` need at ``peak`` and a measured time against it (seconds).

    ``roofline_s = max(compute_s, memory_s)`` with ``memory_s`` from the unfused upper
    bound of the bytes; ``fused_s`` is the same with the fused lower bound. ``ratio`` is
    ``measured_s / roofline_s`` (1.0: at the limit of the unfused step).
    """

    counts: Counts
    peak: Peak
    compute_s: float
    memory_s: float
    memory_lower_s: float
    roofline_s: float
    fused_s: float
    bound: str
    measured_s: float
    ratio: float
    fused_ratio: float

    def line(self, label: str = "") -> str:
        c, ms = self.counts, 1e3
        intensity = c.flops / c.bytes_upper if c.bytes_upper else math.inf
        head = f"roofline{' ' + label if label else ''}: "
        return (
            f"{head}{c.flops / 1e9:.4g} GFLOP, {c.bytes_upper / 1e9:.4g} GB moved unfused "
            f"(upper bound; {c.bytes_lower / 1e9:.4g} GB distinct buffers, lower bound), "
            f"{intensity:.1f} FLOP/B; at {self.peak.describe()}: compute {self.compute_s * ms:.3f} ms, "
            f"memory {self.memory_s * ms:.3f} ms -> {self.bound}-bound, roofline {self.roofline_s * ms:.3f} ms "
            f"(fused bound {self.fused_s * ms:.3f} ms); measured {self.measured_s * ms:.3f} ms = "
            f"{self.ratio:.2f}x roofline ({self.fused_ratio:.2f}x fused bound)"
        )


def roofline(counts: Counts, peak: Peak, *, measured_s: float) -> Roofline:
    """Compute, memory and roofline times of ``counts`` at ``peak``, and ``measured_s`` against them."""
    compute_s = counts.flops / peak.flops_per_s
    memory_s = counts.bytes_upper / peak.bytes_per_s
    memory_lower_s = counts.bytes_lower / peak.bytes_per_s
    roofline_s = max(compute_s, memory_s)
    fused_s = max(compute_s, memory_lower_s)
    return Roofline(
        counts=counts,
        peak=peak,
        compute_s=compute_s,
        memory_s=memory_s,
        memory_lower_s=memory_lower_s,
        roofline_s=roofline_s,
        fused_s=fused_s,
        bound="compute" if compute_s >= memory_s else "memory",
        measured_s=measured_s,
        ratio=measured_s / roofline_s if roofline_s else math.inf,
        fused_ratio=measured_s / fused_s if fused_s else math.inf,
    )


def counts_line(counts: Counts, *, top: int = 4) -> str:
    """Counts alone (no peak known), with the ops that carry most FLOPs and bytes."""
    return (
        f"{counts.flops / 1e9:.4g} GFLOP ({_top(counts.flops_by_op, top, 1e9, 'G')}), "
        f"{counts.bytes_upper / 1e9:.4g} GB moved unfused, upper bound ({_top(counts.bytes_by_op, top, 1e9, 'GB')}); "
        f"{counts.bytes_lower / 1e9:.4g} GB distinct buffers, lower bound; {counts.ops} data-moving aten ops"
    )


def _top(values: dict[str, int], top: int, scale: float, unit: str) -> str:
    items: Iterable[tuple[str, int]] = sorted(values.items(), key=lambda kv: -kv[1])[:top]
    return ", ".join(f"{name} {value / scale:.4g} {unit}" for name, value in items) or "none"
