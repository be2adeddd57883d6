"""LoRA, QLoRA and full fine-tuning side by side on a tiny model: what trains, what is saved,
and that a run folder reloads with its own settings and the same logits."""
import pytest
import torch
import yaml

from conftest import fast_trainer
from finetuning_suite import ConfigError, FineTuner

QA = [{"prompt": f"Code {i}?", "completion": f" {'ABCDEFGH'[i]}{'ABCDEFGH'[i]}"} for i in range(8)]


def logits(ft, text="Code 3?"):
    enc = ft.tokenizer(text, return_tensors="pt")
    ft.model.eval()
    with torch.no_grad():
        return ft.model(**enc).logits


def test_full_fine_tuning_trains_every_weight_and_saves_a_plain_model(tiny_llama, tmp_path):
    ft = FineTuner(tiny_llama, device="cpu", dataset_name=QA, method="full", max_length=5,
                   trainer_config=fast_trainer(learning_rate=1e-3))
    assert not any("lora_" in n for n, _ in ft.model.named_parameters())
    before = {n: p.detach().clone() for n, p in ft.model.named_parameters()}
    out = tmp_path / "full"
    ft.train(str(out), num_train_epochs=2)
    moved = [n for n, p in ft.model.named_parameters() if not torch.equal(before[n], p.detach())]
    assert len(moved) == len(before), "full fine-tuning moves every weight"
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(out)  # no finetuning_suite needed
    enc = ft.tokenizer("Code 3?", return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(plain(**enc).logits, logits(ft), atol=1e-5)
    again = FineTuner(str(out), device="cpu")
    assert again.config.method.method == "full" and again.max_length == 5  # its own settings
    from finetuning_suite.config import FinetuneConfig

    via_config = FineTuner.from_config(FinetuneConfig.from_flat({"model_id": str(out), "device": "cpu"}))
    assert via_config.config.method.method == "full" and via_config.max_length == 5  # as the CLI loads it
    assert torch.allclose(logits(again), logits(ft), atol=1e-5)


def test_lora_run_reloads_with_its_settings_and_logits(tiny_llama, tmp_path):
    ft = FineTuner(tiny_llama, device="cpu", dataset_name=QA, max_length=7, lora_r=4,
                   trainer_config=fast_trainer())
    out = tmp_path / "lora"
    ft.train(str(out), num_train_epochs=2)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["lora_r"] == 4 and saved["max_length"] == 7 and saved["method"] == "lora"
    assert saved["learning_rate"] == 5e-3 and saved["seed"] == 42
    again = FineTuner(str(out), device="cpu")
    assert again.max_length == 7
    assert torch.allclose(logits(again), logits(ft), atol=1e-5)
    assert FineTuner(str(out), device="cpu", max_length=3).max_length == 3  # explicit wins


def test_same_seed_same_adapter_initialisation(tiny_llama):
    a = FineTuner(tiny_llama, device="cpu", lora_r=4)
    b = FineTuner(tiny_llama, device="cpu", lora_r=4)
    for (na, pa), (nb, pb) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert na == nb and torch.equal(pa, pb)


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "full", "quantize": True}, "full fine-tuning cannot train a quantized"),
    ({"method": "sgd"}, "method='sgd'"),
    ({"lora_alpha": float("nan")}, "lora_alpha=nan: must be a finite number"),
    ({"learning_rate": "fast"}, "learning_rate='fast'"),
    ({"per_device_train_batch_size": 0}, "per_device_train_batch_size=0"),
    ({"trust_remote_code": "no"}, "trust_remote_code='no': must be true or false"),
    ({"lernin_rate": 1e-3}, "did you mean 'learning_rate'?"),
])
def test_bad_options_are_refused_before_loading(tiny_llama, kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("?", r"\?")):
        FineTuner(tiny_llama, device="cpu", **kwargs)


def test_evaluate_reports_loss_and_generation_metrics(tiny_llama):
    ft = FineTuner(tiny_llama, device="cpu", dataset_name=QA, eval_fraction=0.25, max_length=4)
    metrics = ft.evaluate()
    assert metrics["n"] == 2 and len(metrics["samples"]) == 2
    assert metrics["perplexity"] == pytest.approx(float(torch.tensor(metrics["loss"]).exp()), rel=1e-4)
    assert 0 <= metrics["exact_match"] <= 1 and 0 <= metrics["eos_rate"] <= 1
