"""Int8 weights for a CPU's decode steps: :class:`Int8Linear`, the layers of ``load(quantization="int8")`` and
the ``lm_head`` of ``"int4"``.

A layer keeps its weights as int8, one scale per output (symmetric: ``weight ≈ int8 × scale``), and multiplies
bfloat16 inputs by them with torch's own kernel for this, ``torch._weight_int8pack_mm``.

Why not torchao's int8 (torchao 0.18, torch 2.13, two cores of an AMD EPYC, the full-size architecture):

* ``Int8DynamicActivationInt8WeightConfig`` rounds each input row to int8 too. On a CPU with AVX512-VNNI and
  no AMX (AMD Zen 4 and 5, Intel Xeons before Sapphire Rapids) it takes a route that sums every column of the weights
  again at every call (``torchao.kernel.intmm._int_scaled_matmul_cpu``, written to be folded away by
  ``torch.compile``): without compiling, that sum over ``lm_head`` alone took about 0.13 s per token (a torch
  profile), and the whole model in that form 0.63-1.32 s per token, slower than float32 (0.27 s);
* ``Int8WeightOnlyConfig`` turns the weights back into floats at every call: 0.69 s per token.

Int8 weights with bfloat16 inputs in :class:`Int8Linear` (text decoder and ``lm_head``, the vision tower in
bfloat16): 0.087 s per token (the int8 row of ``bench/results/cpu/results.md``, batch 1; 0.069-0.078 s in runs
the day before).
``_weight_int8pack_mm`` is fast with bfloat16 inputs only: with float32 inputs the same layers took 0.44 s per token,
so the layers refuse other input types.
"""

from __future__ import annotations

import torch

#: The input type :class:`Int8Linear` computes in (``_weight_int8pack_mm`` is slow with float32 inputs).
DTYPE = torch.bfloat16


def int8_per_output(weight: torch.Tensor, rows: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes, scale)`` of a ``(outputs, inputs)`` weight: each output's row rounded to int8 codes with the
    float32 scale ``max |w| / 127`` (``weight ≈ codes × scale[:, None]``). The rule of :class:`Int8Linear` and of
    the int4-onnx prompt graph's 8-bit products.

    The rows are converted ``rows`` at a time, so the float32 temporaries stay small: Kosmos-2's ``lm_head``
    (65 037 × 2 048) at once would take about 1.6 GB of them."""
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 1:
        raise ValueError(f"rows must be a positive int (rows converted at a time), got {rows!r}")
    codes = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    scale = torch.empty(weight.shape[0], dtype=torch.float32, device=weight.device)
    for start in range(0, weight.shape[0], rows):
        block = weight[start:start + rows].detach().float()
        block_scale = block.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127
        codes[start:start + rows] = torch.round(block / block_scale[:, None]).clamp(-127, 127)
        scale[start:start + rows] = block_scale
    return codes, scale


def int8_kernel_available() -> bool:
    """Whether this torch has the CPU kernel :class:`Int8Linear` multiplies with (``_weight_int8pack_mm``)."""
    return hasattr(torch.ops.aten, "_weight_int8pack_mm")


class Int8Linear(torch.nn.Module):
    """A ``nn.Linear`` with int8 weights (``(out_features, in_features)``) and a scale per output, computing in
    bfloat16; made from a float layer by :meth:`from_linear`."""

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        if weight.dtype != torch.int8 or weight.dim() != 2:
            raise ValueError(f"weight must be a 2-D int8 tensor (out_features, in_features), got a "
                             f"{weight.dim()}-D {weight.dtype} tensor")
        if scale.shape != (weight.shape[0],):
            raise ValueError(f"scale must hold one value per output ({weight.shape[0]}), got shape "
                             f"{tuple(scale.shape)}")
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight)
        self.register_buffer("scale", scale.to(DTYPE))
        self.register_buffer("bias", None if bias is None else bias.to(DTYPE))

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear) -> Int8Linear:
        """``linear``'s weights rounded to int8 with the scale ``max |w| / 127`` of each output row
        (:func:`int8_per_output`)."""
        return cls(*int8_per_output(linear.weight), None if linear.bias is None else linear.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != DTYPE:
            raise TypeError(f"Int8Linear computes in {DTYPE} (its CPU kernel is slow in other types); got a "
                            f"{x.dtype} input: load with dtype='bfloat16'")
        flat = x.reshape(-1, self.in_features)
        y = torch._weight_int8pack_mm(flat, self.weight, self.scale).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
