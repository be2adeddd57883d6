"""LoraDropout: the same Bernoulli dropout as nn.Dropout, from a cheaper mask on a CPU.

Expected values come from the dropout definition (keep probability 1 - p, kept values scaled so
the expectation is the input), not from the module's own arithmetic."""
import math

import pytest
import torch
from torch import nn

from finetuning_suite import FineTuner
from finetuning_suite.model.dropout import LoraDropout, keep_mask


def _within_binomial(kept: int, n: int, p_keep: float, sigmas: float = 5.0) -> bool:
    return abs(kept - n * p_keep) <= sigmas * math.sqrt(n * p_keep * (1 - p_keep))


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_each_element_is_kept_with_probability_one_minus_p(p):
    torch.manual_seed(0)
    mask = keep_mask((2000, 1003), p)  # an odd size: the last random word is cut
    assert mask.dtype == torch.bool and mask.shape == (2000, 1003)
    assert _within_binomial(int(mask.sum()), mask.numel(), 1 - p)
    # each of the four 16-bit pieces of a random word is its own uniform draw
    by_piece = mask.flatten()[: mask.numel() // 4 * 4].view(-1, 4)
    for piece in range(4):
        assert _within_binomial(int(by_piece[:, piece].sum()), by_piece.shape[0], 1 - p)
    # neighbours are independent: P(both kept) = (1 - p)^2
    both = int((by_piece[:, 0] & by_piece[:, 1]).sum())
    assert _within_binomial(both, by_piece.shape[0], (1 - p) ** 2)


def test_the_output_keeps_the_input_in_expectation_and_zeroes_the_rest():
    torch.manual_seed(1)
    x = torch.rand(64, 32) + 0.5
    dropout = LoraDropout(0.1).train()
    draws = torch.stack([dropout(x) for _ in range(2000)])
    zeroed = (draws == 0).float().mean().item()
    assert abs(zeroed - 0.1) < 0.003
    kept_ratio = draws[draws != 0] / x.expand_as(draws)[draws != 0]
    assert torch.allclose(kept_ratio, torch.full_like(kept_ratio, 1 / 0.9), rtol=1e-4)
    assert torch.allclose(draws.mean(0), x, rtol=0.03)  # 2000 draws: ~0.7% standard error per element


def test_the_gradient_is_the_same_mask_as_the_forward():
    torch.manual_seed(2)
    x = (torch.rand(40, 24) + 0.5).requires_grad_(True)
    g = torch.randn(40, 24)
    y = LoraDropout(0.3).train()(x)
    y.backward(g)
    assert torch.allclose(x.grad, g * (y.detach() / x.detach()), atol=1e-6)


def test_the_seed_repeats_the_mask_and_eval_or_zero_p_is_the_identity():
    x = torch.randn(30, 30)
    dropout = LoraDropout(0.2).train()
    torch.manual_seed(3)
    first = dropout(x)
    torch.manual_seed(3)
    assert torch.equal(dropout(x), first)
    assert not torch.equal(dropout(x), first)
    assert torch.equal(dropout.eval()(x), x)
    assert torch.equal(LoraDropout(0.0).train()(x), x)


def test_bf16_inputs_stay_bf16():
    x = torch.randn(16, 16, dtype=torch.bfloat16, requires_grad=True)
    y = LoraDropout(0.5).train()(x)
    y.sum().backward()
    assert y.dtype == torch.bfloat16 and x.grad.dtype == torch.bfloat16


def test_the_package_lora_model_uses_it_and_saves_plain_peft(tiny_llama, tmp_path):
    ft = FineTuner(tiny_llama, lora_dropout=0.1)
    dropouts = [d for name, d in ft.model.named_modules() if name.endswith("lora_dropout.default")]
    assert dropouts and all(type(d) is LoraDropout and d.p == 0.1 for d in dropouts)
    ft.model.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    keys = load_file(tmp_path / "adapter_model.safetensors").keys()
    assert keys and all("lora_A" in k or "lora_B" in k for k in keys)
    no_dropout = FineTuner(tiny_llama, lora_dropout=0.0)
    assert not any(isinstance(m, nn.Dropout) for n, m in no_dropout.model.named_modules() if "lora_dropout" in n)
