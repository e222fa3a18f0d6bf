"""helpers.grounding.int8_linear: int8 weights with a scale per output, multiplied by torch's own kernel."""

from __future__ import annotations

import pytest
import torch

from helpers.grounding.int8_linear import DTYPE, Int8Linear, int8_kernel_available


@pytest.fixture
def linear() -> torch.nn.Linear:
    torch.manual_seed(0)
    layer = torch.nn.Linear(96, 1297)  # lm_head's odd output count, as the bundled model's
    layer.weight.data[5] = 0.0  # a row of zeros must not divide by a zero scale
    return layer.to(DTYPE)


def test_the_kernel_is_there() -> None:
    assert int8_kernel_available()


def test_codes_are_the_weights_rounded_per_output_row(linear) -> None:
    layer = Int8Linear.from_linear(linear)
    weight = linear.weight.float()
    assert layer.weight.dtype == torch.int8 and layer.weight.shape == (1297, 96)
    assert layer.scale.dtype == DTYPE and layer.scale.shape == (1297,)
    codes = layer.weight.int()
    assert codes.abs().amax(dim=1)[torch.arange(1297) != 5].eq(127).all()  # each row's largest weight is ±127
    assert codes[5].eq(0).all()
    rebuilt = codes.float() * layer.scale.float()[:, None]
    per_row = (rebuilt - weight).abs().amax(dim=1) / weight.abs().amax(dim=1).clamp(min=1e-12)
    assert per_row.max() < 0.5 / 127 + 0.01  # half a step, and bfloat16's rounding of the scale


def test_the_scale_is_each_rows_largest_weight_over_127(linear) -> None:
    """Exactly max |w| / 127 per output row, stored in the layer's type: the codes' check above tolerates a
    scale of max |w| / 128 (its codes still reach ±127)."""
    layer = Int8Linear.from_linear(linear)
    expected = (linear.weight.float().abs().amax(dim=1) / 127).to(DTYPE)
    rows = torch.arange(1297) != 5  # row 5 is zeros: its scale is only kept above zero, not max |w| / 127
    assert torch.equal(layer.scale[rows], expected[rows])


def test_the_product_is_the_int8_weights_times_the_input(linear) -> None:
    layer = Int8Linear.from_linear(linear)
    x = torch.randn(2, 7, 96).to(DTYPE)  # a batch of sequences: any leading dimensions
    y = layer(x)
    assert y.shape == (2, 7, 1297) and y.dtype == DTYPE
    expected = x.float() @ (layer.weight.float() * layer.scale.float()[:, None]).T + linear.bias.float()
    assert torch.allclose(y.float(), expected, rtol=0.02, atol=0.02)
    relative = ((y.float() - linear(x).float()).norm() / linear(x).float().norm()).item()
    assert 0 < relative < 0.02  # int8 moves the output a little
    one_row = layer(x[:1, :1])  # a decode step
    assert torch.allclose(one_row.float(), y[:1, :1].float(), rtol=0.02, atol=0.02)


def test_no_bias(linear) -> None:
    plain = torch.nn.Linear(96, 32, bias=False).to(DTYPE)
    layer = Int8Linear.from_linear(plain)
    assert layer.bias is None and "bias=False" in repr(layer)
    assert layer(torch.ones(1, 96, dtype=DTYPE)).shape == (1, 32)


def test_bad_input_is_refused(linear) -> None:
    layer = Int8Linear.from_linear(linear)
    with pytest.raises(TypeError, match=r"computes in torch.bfloat16 .* got a torch.float32 input: load with "
                                        r"dtype='bfloat16'"):
        layer(torch.randn(1, 96))
    with pytest.raises(ValueError, match=r"weight must be a 2-D int8 tensor .* got a 2-D torch.float32"):
        Int8Linear(torch.zeros(4, 8), torch.ones(4))
    with pytest.raises(ValueError, match=r"scale must hold one value per output \(4\), got shape \(8,\)"):
        Int8Linear(torch.zeros(4, 8, dtype=torch.int8), torch.ones(8))


def test_the_rows_are_rounded_the_same_in_blocks(linear) -> None:
    """int8_per_output converts a few rows at a time (lm_head's float32 copy at once would take 1.6 GB); the blocks,
    the last one short, give the codes and scales of the whole weight converted at once."""
    from helpers.grounding.int8_linear import int8_per_output

    whole = int8_per_output(linear.weight, rows=10**6)
    for rows in (1, 100, 1296):
        codes, scale = int8_per_output(linear.weight, rows=rows)
        assert torch.equal(codes, whole[0]) and torch.equal(scale, whole[1])
    weight = linear.weight.float()
    assert torch.equal(whole[1], weight.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127)
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match=r"rows must be a positive int"):
            int8_per_output(linear.weight, rows=bad)
