"""Training end to end on tiny models: loss goes down, base frozen, adapter moved, files written,
the saved adapter reloads with the same logits; bad input fails before anything is written."""
import json
import time

import pytest
import torch

from finetuning_suite import ConfigError, DatasetError, DefaultTrainerConfig, FineTuner
from conftest import fast_trainer

QA = [{"prompt": f"Code {i}?", "completion": f" {'ABCDEFGH'[i]}{'ABCDEFGH'[i]}"} for i in range(8)]


def snapshot(model, lora: bool):
    return {n: p.detach().clone() for n, p in model.named_parameters() if ("lora_" in n) == lora}


def mean_loss(ft):
    """Mean loss of the model on its own tokenized training set."""
    from finetuning_suite.train.trainer_config import default_collator

    collate = default_collator(ft.tokenizer, ft.model, ft.is_encoder_decoder, on_cpu=True)
    batch = collate([ft.tokenized_dataset[i] for i in range(len(ft.tokenized_dataset))])
    ft.model.eval()
    with torch.no_grad():
        return ft.model(**{k: v.to(ft.model.device) for k, v in batch.items()}).loss.item()


@pytest.mark.parametrize("kind", ["llama", "gpt2", "t5", "bart"])
def test_training_learns_and_saves(tiny_models, tmp_path, kind):
    ft = FineTuner(tiny_models[kind], dataset_name=QA, lora_target_modules="all-linear",
                   trainer_config=fast_trainer(learning_rate=1e-2))
    ft.preprocess_data()
    before_loss = mean_loss(ft)
    base_before, lora_before = snapshot(ft.model, False), snapshot(ft.model, True)
    out = tmp_path / "run"
    called = time.time()
    metrics = ft.train(str(out), num_train_epochs=8)
    returned = time.time()
    after_loss = mean_loss(ft)
    assert after_loss < before_loss * 0.85, (before_loss, after_loss)
    assert metrics["train_loss"] > 0 and metrics["epoch"] == pytest.approx(8)
    # the start-up figure lies within the call, and before its end (8 epochs came after it)
    assert 0 < metrics["seconds_to_first_step"] < returned - called
    for name, value in snapshot(ft.model, False).items():
        torch.testing.assert_close(value, base_before[name], msg=name)  # base frozen
    assert any(not torch.equal(v, lora_before[n]) for n, v in snapshot(ft.model, True).items())

    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer_config.json",
                 "finetuner_config.json"):
        assert (out / name).is_file(), name
    run = json.loads((out / "finetuner_config.json").read_text())
    assert run["model"]["source"] == tiny_models[kind]
    assert run["data"]["stats"]["train"]["kept"] == 8 and run["seed"] == 42
    assert run["versions"]["transformers"] and run["lora"]["r"] == 16
    assert run["lora"]["target_modules"] == "all-linear" or len(run["lora"]["target_modules"]) > 2
    assert run["training"]["num_train_epochs"] == 8

    reloaded = FineTuner(str(out), device=ft.device)
    ids = torch.tensor([ft.tokenized_dataset[0]["input_ids"]], device=ft.model.device)
    extra = {"decoder_input_ids": ids[:, :3]} if ft.is_encoder_decoder else {}
    ft.model.eval(), reloaded.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded.model(input_ids=ids, **extra).logits,
                                   ft.model(input_ids=ids, **extra).logits)
    assert reloaded.generate("Code 3?", max_length=4) == ft.generate("Code 3?", max_length=4)


def test_trainer_config_supplies_everything(tiny_llama, tmp_path):
    cfg = fast_trainer(output_dir=str(tmp_path / "from_config"), num_train_epochs=1, save_total_limit=1)
    ft = FineTuner(tiny_llama, dataset_name=QA, trainer_config=cfg)
    metrics = ft.train()
    assert metrics["epoch"] == pytest.approx(1)
    assert (tmp_path / "from_config" / "adapter_model.safetensors").is_file()


def test_eval_split_is_evaluated(tiny_llama, tmp_path):
    ft = FineTuner(tiny_llama, dataset_name=QA, eval_fraction=0.25, trainer_config=fast_trainer())
    metrics = ft.train(str(tmp_path / "run"), num_train_epochs=1)
    assert "eval_loss" in metrics and len(ft.eval_dataset) == 2


def test_adapter_path_argument(tiny_llama, tmp_path):
    ft = FineTuner(tiny_llama, dataset_name=QA, trainer_config=fast_trainer())
    ft.train(str(tmp_path / "run"), num_train_epochs=2)
    again = FineTuner(tiny_llama, adapter_path=str(tmp_path / "run"))
    assert again.source.adapter_path.endswith("run")
    assert again.generate("Code 1?", max_length=3) == ft.generate("Code 1?", max_length=3)


def test_unknown_training_argument_suggests_the_name():
    with pytest.raises(ConfigError, match="'num_epochs'.*did you mean 'num_train_epochs'"):
        DefaultTrainerConfig(num_epochs=3)


@pytest.mark.parametrize("epochs", [0, -1])
def test_bad_epochs_fail_before_writing(tiny_llama, tmp_path, epochs):
    ft = FineTuner(tiny_llama, dataset_name=QA)
    with pytest.raises(ConfigError, match=f"num_train_epochs={epochs}"):
        ft.train(str(tmp_path / "run"), num_train_epochs=epochs)
    assert not (tmp_path / "run").exists()


def test_output_dir_that_is_a_file(tiny_llama, tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("keep me")
    with pytest.raises(ConfigError, match="is an existing file"):
        FineTuner(tiny_llama, dataset_name=QA).train(str(target), 1)
    assert target.read_text() == "keep me"


def test_bad_data_leaves_no_output_dir(tiny_llama, tmp_path):
    ft = FineTuner(tiny_llama, dataset_name=[{"foo": "x"}])
    with pytest.raises(DatasetError, match="fit no known format"):
        ft.train(str(tmp_path / "run"), 1)
    assert not (tmp_path / "run").exists()
