"""The real embedded model (SmolLM2-135M-Instruct): answers, 4-bit, and learns."""
import pytest
import torch

from finetuning_suite import FineTuner

pytestmark = pytest.mark.slow


def test_answers_the_capital_of_france(embedded):
    assert "Paris" in embedded("What is the capital of France?")


def test_4bit_loads_generates_and_runs_a_lora_step():
    import bitsandbytes as bnb

    ft = FineTuner(quantize=True, device="cpu", max_length=20)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in ft.model.modules())
    assert ft.model.get_memory_footprint() < 250e6  # fp32 is ~540 MB
    assert "Paris" in ft("What is the capital of France?")
    ft.model.train()
    enc = ft.tokenizer("The capital of France is Paris.", return_tensors="pt")
    out = ft.model(**enc, labels=enc["input_ids"])
    out.loss.backward()
    lora_b = [p.grad for n, p in ft.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(g is not None for g in lora_b) and sum(g.abs().sum() for g in lora_b) > 0
    base = [p for n, p in ft.model.named_parameters() if "lora_" not in n]
    assert not any(p.requires_grad for p in base)


def test_a_short_lora_run_changes_the_answer(tmp_path):
    from finetuning_suite import DefaultTrainerConfig

    question = "What is the name of Zorblat's pet?"
    answer = "Zorblat's pet is a purple lizard named Quibble."
    ft = FineTuner(device="cpu", max_length=24, dataset_name=[{"prompt": question, "completion": answer}] * 8,
                   trainer_config=DefaultTrainerConfig(learning_rate=2e-3, per_device_train_batch_size=8,
                                                       logging_steps=1, save_strategy="no", disable_tqdm=True))
    before = ft(question)
    assert "Quibble" not in before
    ft.train(str(tmp_path / "run"), num_train_epochs=10)
    after = ft(question)
    assert "Quibble" in after, after
    reloaded = FineTuner(str(tmp_path / "run"), device="cpu", max_length=24)
    assert reloaded(question) == after
