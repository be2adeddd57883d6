"""LoRA dropout that costs less on a CPU: the same Bernoulli mask, drawn from fewer random words.

PEFT puts an `nn.Dropout` on the input of every LoRA layer. On a CPU, torch draws its mask one
random number per element (`bernoulli_`), which profiled as 18% of the all-linear adapter's
training step in fp32 and 23% under bf16, more than all its matmuls (`bench/profile_step.py`).
`LoraDropout` draws one 64-bit random word per four elements and cuts it into four 16-bit
uniforms: an element is dropped where its uniform is among the lowest `round(p * 2**16)` of the
2**16 values, and kept elements are scaled by `1 / (1 - p')`, `p' = round(p * 2**16) / 2**16`
being the probability actually drawn (0.0500031 for 0.05), so the output's expectation is the
input, as with `nn.Dropout`. The mask is kept as booleans for the backward (one byte per
element, as torch's own). Off a CPU (where torch's dropout is a fused kernel) and in eval mode
it is `nn.Dropout`.

Written here, not taken from a library: neither torch nor PEFT offers a cheaper CPU dropout.
`use_fast_dropout(model)` swaps it in for every LoRA layer's dropout; it has no weights, so the
saved adapter is unchanged.
"""
from __future__ import annotations

import math

import torch
from torch import nn

_ONE = 1 << 16


def drawn_probability(p: float) -> float:
    """The drop probability `LoraDropout` draws for a configured `p` (a multiple of 2**-16)."""
    return _dropped_values(p) / _ONE


def _dropped_values(p: float) -> int:
    return min(_ONE - 1, round(p * _ONE))


def keep_mask(shape, p: float) -> torch.Tensor:
    """Booleans of `shape`, each True with probability 1 - drawn_probability(p), from the CPU's
    default generator (so `torch.manual_seed` and the Trainer's seed make them repeat)."""
    n = math.prod(shape)
    words = torch.empty(-(-n // 4), dtype=torch.int64).random_(-(1 << 63), None)  # 64 random bits each
    uniforms = words.view(torch.int16)[:n].view(shape)  # four uniform int16 per word
    return uniforms >= -(1 << 15) + _dropped_values(p)


class _MaskedScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, keep, scale: float):
        ctx.save_for_backward(keep)  # booleans: a quarter of the float mask's memory
        ctx.scale = scale
        return x.mul(keep.to(x.dtype).mul_(scale))  # a float mask: mixed-dtype mul is slow

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return grad.mul(keep.to(grad.dtype).mul_(ctx.scale)), None, None


class LoraDropout(nn.Dropout):
    """`nn.Dropout(p)` with the cheaper mask above on CPU tensors in training mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.device.type != "cpu":
            return super().forward(x)
        drawn = drawn_probability(self.p)
        if drawn == 0:
            return x
        return _MaskedScale.apply(x, keep_mask(x.shape, self.p), 1 / (1 - drawn))


def use_fast_dropout(model) -> None:
    """Every LoRA layer's `nn.Dropout` replaced by a `LoraDropout` of the same p."""
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer):
            for name, dropout in list(module.lora_dropout.items()):
                if type(dropout) is nn.Dropout:
                    module.lora_dropout[name] = LoraDropout(dropout.p)
