"""benchmarks/roofline.py: counted FLOPs and bytes against analytic values, the roofline
arithmetic, the peak table, and profile_step.py's counting path on a tiny CPU config."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmarks import profile_step
from benchmarks.roofline import Counts, Peak, count_step, peak_for, roofline
from tests.conftest import write_tiny_idx

F32 = 4


def test_conv_and_linear_flops_match_the_formulas():
    torch.manual_seed(0)
    n, cin, cout, k, side, classes = 2, 3, 4, 3, 8, 5
    conv = nn.Conv2d(cin, cout, k, padding=1)
    linear = nn.Linear(cout * side * side, classes)
    x = torch.randn(n, cin, side, side)
    conv_forward = 2 * n * cout * cin * k * k * side * side
    linear_forward = 2 * n * (cout * side * side) * classes

    forward = count_step(lambda: linear(conv(x).flatten(1)))
    assert forward.flops == conv_forward + linear_forward

    # backward: the linear layer needs its input and weight gradients (2 more products);
    # the convolution only its weight gradient, since x needs none (1 more)
    both = count_step(lambda: linear(torch.relu(conv(x)).flatten(1)).sum().backward())
    assert both.flops == 2 * conv_forward + 3 * linear_forward
    assert both.flops_by_op["convolution_backward"] == conv_forward

    x.requires_grad_(True)  # now the convolution's input gradient too
    assert count_step(lambda: linear(conv(x).flatten(1)).sum().backward()).flops == 3 * (conv_forward + linear_forward)


def test_elementwise_add_moves_two_reads_and_one_write():
    a, b = torch.randn(37, 11), torch.randn(37, 11)
    counts = count_step(lambda: a + b)
    assert counts.bytes_upper == 3 * a.numel() * F32
    assert counts.bytes_lower == 3 * a.numel() * F32
    assert counts.flops == 0 and counts.ops == 1


def test_in_place_and_copy_count_what_they_read_and_write():
    a, b = torch.randn(100), torch.randn(100)
    assert count_step(lambda: a.add_(b)).bytes_upper == 3 * 100 * F32  # reads self and other, writes self
    assert count_step(lambda: a.copy_(b)).bytes_upper == 2 * 100 * F32  # copy_ does not read its destination


def test_views_move_no_bytes():
    x = torch.randn(4, 6)

    def views():
        x.view(24)
        x.reshape(6, 4)
        x.expand(3, 4, 6)
        x.t()
        x.transpose(0, 1)
        x.detach()
        x.as_strided((2, 2), (1, 1))
        x[1:]
        x.unsqueeze(0).squeeze(0)

    counts = count_step(views)
    assert counts.bytes_upper == 0 and counts.bytes_lower == 0 and counts.ops == 0


def test_expanded_input_is_read_once_and_lower_bound_counts_each_buffer_once():
    row, full = torch.randn(1, 100), torch.randn(50, 100)
    counts = count_step(lambda: row.expand(50, 100) + full)
    assert counts.bytes_upper == (100 + 5000 + 5000) * F32  # the expanded row is 100 floats in memory

    a, b = torch.randn(64), torch.randn(64)
    chained = count_step(lambda: (a + b) * 2)
    assert chained.bytes_upper == (3 + 2) * 64 * F32  # add reads 2 writes 1; mul reads 1 writes 1
    assert chained.bytes_lower == 4 * 64 * F32  # a, b, a + b and the product, once each


def test_roofline_picks_the_bound_and_the_time():
    peak = Peak(flops_per_s=1e15, bytes_per_s=1e12, dtype="bf16", source="test")
    memory = Counts(flops=2 * 10**12, bytes_upper=10**10, bytes_lower=10**9, ops=1, flops_by_op={}, bytes_by_op={})
    line = roofline(memory, peak, measured_s=0.02)
    assert line.bound == "memory"
    assert line.compute_s == pytest.approx(2e-3) and line.memory_s == pytest.approx(10e-3)
    assert line.roofline_s == pytest.approx(10e-3) and line.fused_s == pytest.approx(2e-3)
    assert line.ratio == pytest.approx(2.0) and line.fused_ratio == pytest.approx(10.0)
    assert "memory-bound" in line.line("x")

    compute = Counts(flops=5 * 10**13, bytes_upper=10**9, bytes_lower=10**8, ops=1, flops_by_op={}, bytes_by_op={})
    line = roofline(compute, peak, measured_s=0.1)
    assert line.bound == "compute" and line.roofline_s == pytest.approx(0.05) and line.ratio == pytest.approx(2.0)


def test_peak_table_and_overrides():
    h200 = peak_for("NVIDIA H200", "tf32")
    assert h200 is not None and h200.flops_per_s == 494e12 and h200.bytes_per_s == 4.8e12
    h100 = peak_for("NVIDIA H100 80GB HBM3", "bf16")
    assert h100 is not None and h100.flops_per_s == 989e12 and h100.bytes_per_s == 3.35e12
    assert peak_for("NVIDIA H100 80GB HBM3", "fp32").flops_per_s == 67e12  # type: ignore[union-attr]
    assert peak_for("NVIDIA A100-SXM4-40GB", "tf32") is None  # not in the table
    assert peak_for("NVIDIA H100 PCIe", "bf16") is None and peak_for("NVIDIA H200 NVL", "bf16") is None  # lower peaks
    assert peak_for("NVIDIA A100-SXM4-40GB", "tf32", tflops=156, gbps=1555).bytes_per_s == 1555e9  # type: ignore[union-attr]
    overridden = peak_for("NVIDIA H200", "bf16", gbps=1000)
    assert overridden is not None and overridden.flops_per_s == 989e12 and overridden.bytes_per_s == 1e12
    with pytest.raises(ValueError, match="compute dtype"):
        peak_for("NVIDIA H200", "fp8")
    with pytest.raises(ValueError, match="peak FLOP/s must be a positive"):
        Peak(flops_per_s=0.0, bytes_per_s=1.0, dtype="fp32", source="x")


def test_profile_step_counts_a_tiny_cpu_config(tmp_path: Path, capsys):
    write_tiny_idx(tmp_path / "idx")
    code = profile_step.main(
        [
            "--device",
            "cpu",
            "--idx-dir",
            str(tmp_path / "idx"),
            "--modes",
            "vanilla,cobra",
            "--variant",
            "eager",
            "--width",
            "8",
            "--ipc",
            "2",
            "--batch-real",
            "8",
            "--steps",
            "1",
            "--warmup-steps",
            "0",
            "--audit-epochs",
            "2",
            "--peak-tflops",
            "0.1",
            "--peak-gbps",
            "20",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0
    report = (tmp_path / "out" / "profile_cpu.md").read_text()
    assert "torch.profiler tables skipped on cpu" in report
    lines = [line for line in report.splitlines() if line.startswith("roofline ")]
    assert [line.split()[1] for line in lines] == ["vanilla", "cobra", "audit"]
    for line in lines:
        flops, bytes_upper, bytes_lower = (
            float(v)
            for v in re.search(
                r": ([\d.e+-]+) GFLOP, ([\d.e+-]+) GB moved unfused .*?; ([\d.e+-]+) GB distinct", line
            ).groups()
        )
        assert flops > 0 and bytes_upper >= bytes_lower > 0
        assert re.search(
            r"-> (memory|compute)-bound, roofline [\d.]+ ms .* measured [\d.]+ ms = [\d.]+x roofline", line
        )
    gflops = {line.split()[1]: float(re.search(r": ([\d.e+-]+) GFLOP", line).group(1)) for line in lines}
    assert gflops["cobra"] > gflops["vanilla"]  # the cobra warm-up trains the embedder on top of the matching
    assert "0.1 TFLOP/s fp32" in capsys.readouterr().out


def test_profile_step_rejects_an_unknown_variant(tmp_path: Path):
    with pytest.raises(SystemExit):
        profile_step.main(["--device", "cpu", "--variant", "fast", "--idx-dir", str(tmp_path)])
