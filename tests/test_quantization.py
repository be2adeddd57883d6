"""quantize / quantization_config -> BitsAndBytesConfig, 4-bit loading and 8-bit training on the CPU."""
import json

import pytest
import torch
from transformers import BitsAndBytesConfig

from finetuning_suite import ConfigError, FineTuner
from finetuning_suite.model.quantization import get_quantization_config
from conftest import fast_trainer

CODES = [{"prompt": f"Code {i}?", "completion": f" {'ABCDEFGH'[i] * 2}"} for i in range(8)]


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


def test_8bit_lora_trains_its_adapter_and_leaves_the_base_alone(tiny_llama, tmp_path):
    """8-bit base + LoRA through the real Trainer: the logged loss falls, every adapter matrix
    moves (lora_B starts at zero, so it moves only if gradients flow through the 8-bit layers),
    and the int8 base weights stay exactly as loaded. (Self-replay is off: on a random model it
    only costs a generation, and the test is about 8-bit training.)"""
    import bitsandbytes as bnb

    ft = FineTuner(tiny_llama, device="cpu", quantize=True, quantization_config={"load_in_8bit": True},
                   dataset_name=CODES, lora_target_modules="all-linear", self_replay=False,
                   trainer_config=fast_trainer(learning_rate=1e-2, gradient_accumulation_steps=1,
                                               lr_scheduler_type="linear"))
    int8 = [m for m in ft.model.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    assert int8 and all(m.weight.dtype == torch.int8 for m in int8)
    base_before = {n: p.detach().clone() for n, p in ft.model.named_parameters() if "lora_" not in n}
    lora_before = {n: p.detach().clone() for n, p in ft.model.named_parameters() if "lora_" in n}
    assert lora_before and all(p.requires_grad for n, p in ft.model.named_parameters() if "lora_" in n)

    out = tmp_path / "run"
    metrics = ft.train(str(out), num_train_epochs=8)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [line["loss"] for line in lines if line.get("event") == "train" and "loss" in line]
    assert len(losses) == 16, losses  # 8 rows / batch 4 * 8 epochs, logged every step
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4  # first and last two epochs
    assert last < 0.85 * first, losses  # measured: 12.7 -> 9.6
    assert metrics["train_loss"] > 0

    after = dict(ft.model.named_parameters())
    for name, value in base_before.items():
        assert torch.equal(after[name].detach(), value), f"base weight {name} changed"
    assert any(after[n].dtype == torch.int8 for n in base_before), "no int8 weight left"
    for name, value in lora_before.items():
        assert not torch.equal(after[name].detach(), value), f"adapter weight {name} did not move"
