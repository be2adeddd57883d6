"""The spec's three usage examples, as written, with model_id set to a model available offline
(a tiny GPT-2 built from a config) and the device this machine has ("cuda" where there is one)."""
import pytest
import torch

from finetuning_suite import DefaultTrainerConfig, FineTuner

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_example_1(tiny_gpt2, tmp_path):
    # Initialize the FineTuner
    finetuner = FineTuner(
        model_id=tiny_gpt2,
        device=DEVICE,
        dataset_name="dialogue",
        lora_r=16,
        lora_alpha=32,
        max_length=1000,
        quantize=True
    )

    # Preprocess the data
    tokenized_dataset = finetuner.preprocess_data()
    base_before, adapter_before = _weights(finetuner)

    # Train the model
    output_dir = "./trained_model"
    num_train_epochs = 3
    metrics = finetuner.train(output_dir, num_train_epochs)

    # Generate text
    prompt_text = "Once upon a time"
    generated_text = finetuner.generate(prompt_text)
    print(generated_text)

    assert len(tokenized_dataset) == 300
    assert isinstance(generated_text, str)
    assert (tmp_path / "trained_model" / "adapter_model.safetensors").is_file()
    # a 4-bit QLoRA run through the Trainer: three epochs ran, the loss went down, the packed
    # 4-bit base weights are untouched and the adapter moved
    assert metrics["epoch"] == pytest.approx(3)
    import json

    losses = [r["loss"] for r in map(json.loads, (tmp_path / "trained_model" / "metrics.jsonl").read_text()
                                     .splitlines()) if "loss" in r]
    assert losses[-1] < losses[0]
    base_after, adapter_after = _weights(finetuner)
    assert base_after.keys() == base_before.keys() and len(base_after) == 8
    assert all(torch.equal(base_before[k], base_after[k]) for k in base_before)
    assert any(not torch.equal(adapter_before[k], adapter_after[k]) for k in adapter_before)


def _weights(finetuner):
    """(4-bit base weights, LoRA weights) of the model, copied."""
    import bitsandbytes as bnb

    base = {n: m.weight.data.clone() for n, m in finetuner.model.named_modules()
            if isinstance(m, bnb.nn.Linear4bit)}
    lora = {n: p.detach().clone() for n, p in finetuner.model.named_parameters() if "lora_" in n}
    return base, lora


def test_example_2(tiny_gpt2):
    # Initialize the FineTuner with custom quantization configuration
    quantization_config = {
        'load_in_4bit': True,
        'bnb_4bit_use_double_quant': True,
        'bnb_4bit_quant_type': "nf4",
        'bnb_4bit_compute_dtype': torch.bfloat16
    }

    finetuner = FineTuner(
        model_id=tiny_gpt2,
        device=DEVICE,
        dataset_name="dialogue",
        max_length=500,
        quantize=True,
        quantization_config=quantization_config
    )

    # Generate text
    prompt_text = "Once upon a time"
    generated_text = finetuner.generate(prompt_text)
    print(generated_text)

    assert isinstance(generated_text, str)
    assert finetuner.quantization_config.bnb_4bit_compute_dtype == torch.bfloat16
    assert_really_4bit(finetuner, tiny_gpt2)


def assert_really_4bit(finetuner, model_folder):
    """The base model's linear layers are bitsandbytes NF4 layers with double quantization and
    bf16 compute, their weights packed two per byte, and the model is smaller than in fp32."""
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    layers = [m for m in finetuner.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 8  # tiny GPT-2: c_attn, c_proj, c_fc, mlp c_proj in each of 2 blocks
    linear_fp32_bytes = 0
    for layer in layers:
        weight, state = layer.weight, layer.weight.quant_state
        assert isinstance(weight, bnb.nn.Params4bit) and weight.dtype == torch.uint8
        assert weight.numel() * 2 == layer.in_features * layer.out_features  # 4 bits a weight
        assert state.quant_type == "nf4" and state.nested  # nested: double quantization
        assert layer.compute_dtype == torch.bfloat16
        linear_fp32_bytes += layer.in_features * layer.out_features * 4
    fp32 = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32).get_memory_footprint()
    lora_bytes = sum(p.numel() * p.element_size() for n, p in finetuner.model.named_parameters()
                     if "lora_" in n)
    base_bytes = finetuner.model.get_memory_footprint() - lora_bytes
    # The embedding (49k x 64) stays fp32; the linear weights shrink 8x, quantization state aside.
    assert fp32 - base_bytes >= linear_fp32_bytes / 2, (fp32, base_bytes, linear_fp32_bytes)


def test_example_3(tiny_gpt2, tmp_path):
    # Initialize the FineTuner with custom trainer configuration
    trainer_config = DefaultTrainerConfig(
        output_dir="./trained_model",
        num_train_epochs=3,
        per_device_train_batch_size=8,
        save_steps=10_000,
        save_total_limit=2,
    )

    finetuner = FineTuner(
        model_id=tiny_gpt2,
        device=DEVICE,
        dataset_name="dialogue",
        max_length=1000,
        trainer_config=trainer_config
    )

    # Train the model
    finetuner.train()

    # Generate text
    prompt_text = "Once upon a time"
    generated_text = finetuner.generate(prompt_text)
    print(generated_text)

    assert isinstance(generated_text, str)
    run = tmp_path / "trained_model"
    assert (run / "adapter_model.safetensors").is_file() and (run / "finetuner_config.json").is_file()
