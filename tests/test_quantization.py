"""quantize / quantization_config -> BitsAndBytesConfig, and 4-bit loading on the CPU."""
import pytest
import torch
from transformers import BitsAndBytesConfig

from finetuning_suite import ConfigError, FineTuner
from finetuning_suite.model.quantization import get_quantization_config


def test_off_means_none():
    assert get_quantization_config(False) is None


def test_default_is_the_spec_qlora_config():
    cfg = get_quantization_config(True)
    assert cfg.load_in_4bit and cfg.bnb_4bit_use_double_quant
    assert cfg.bnb_4bit_quant_type == "nf4" and cfg.bnb_4bit_compute_dtype == torch.bfloat16


def test_dict_with_string_dtype_and_implied_4bit():
    cfg = get_quantization_config(True, {"bnb_4bit_quant_type": "fp4", "bnb_4bit_compute_dtype": "float32"})
    assert cfg.load_in_4bit and cfg.bnb_4bit_quant_type == "fp4"
    assert cfg.bnb_4bit_compute_dtype == torch.float32


def test_8bit_and_object_pass_through():
    assert get_quantization_config(True, {"load_in_8bit": True}).load_in_8bit
    obj = BitsAndBytesConfig(load_in_4bit=True)
    assert get_quantization_config(True, obj) is obj


def test_bad_configs_are_reported(tiny_llama):
    with pytest.raises(ConfigError) as info:
        FineTuner(tiny_llama, quantize=True, quantization_config={
            "load_in_4bit": True, "load_in_8bit": True, "bnb_4bit_compute_dtype": "bf17", "bits": 4})
    message = str(info.value)
    assert "unknown keys ['bits']" in message and "choose one" in message and "'bf17'" in message


def test_config_without_quantize_is_an_error(tiny_llama):
    with pytest.raises(ConfigError, match="quantize=False; pass quantize=True"):
        FineTuner(tiny_llama, quantization_config={"load_in_4bit": True})


def test_4bit_tiny_gpt2_loads_generates_and_backprops(tiny_gpt2):
    import bitsandbytes as bnb

    ft = FineTuner(tiny_gpt2, device="cpu", quantize=True, max_length=5)
    layers = [m for m in ft.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and layers[0].weight.dtype == torch.uint8
    assert isinstance(ft("Once upon a time"), str)  # generate first: the CPU repacking trap
    ft.model.train()
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    loss = ft.model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = [p.grad for n, p in ft.model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_8bit_loads_and_backprops(tiny_llama):
    import bitsandbytes as bnb

    ft = FineTuner(tiny_llama, device="cpu", quantize=True, quantization_config={"load_in_8bit": True})
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in ft.model.modules())
    ft.model.train()
    ids = torch.tensor([[1, 5, 9, 42]])
    ft.model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for n, p in ft.model.named_parameters() if "lora_A" in n)
