"""The adapter shrink (`train/shrink.py`): when it applies, and how rows are split. That a
shrunk adapter still gives the learned answers, moves less from the base on general text and is
what gets saved is checked on the real model, in `test_embedded.py`'s dozen-facts run."""
import json

from conftest import fast_trainer
from finetuning_suite import FineTuner
from finetuning_suite.train.shrink import answer_rows

ROWS = [{"prompt": f"Code word {i}?", "completion": w} for i, w in
        enumerate(["apple", "river", "stone", "cloud", "maple", "ember", "quartz", "willow"])]


def test_nothing_learned_leaves_the_adapter_as_trained_and_is_recorded(tiny_llama, tmp_path):
    ft = FineTuner(tiny_llama, device="cpu", dataset_name=ROWS, self_replay=False, retention_probe=False,
                   eval_fraction=0, trainer_config=fast_trainer(learning_rate=1e-5, max_steps=1))
    metrics = ft.train(str(tmp_path / "run"))
    assert metrics["adapter_shrink"]["scale"] == 1.0
    assert metrics["adapter_shrink"]["learned"] == 0 and "token for token" in metrics["adapter_shrink"]["reason"]
    record = json.loads((tmp_path / "run" / "finetuner_config.json").read_text())
    assert record["metrics"]["adapter_shrink"]["scale"] == 1.0
    assert "Adapter kept at full scale" in (tmp_path / "run" / "report.html").read_text()


def test_full_fine_tuning_and_seq2seq_are_not_shrunk(tiny_models, tmp_path):
    for kind, method in (("llama", "full"), ("t5", "lora")):
        ft = FineTuner(tiny_models[kind], device="cpu", dataset_name=ROWS, method=method, self_replay=False,
                       retention_probe=False, eval_fraction=0, trainer_config=fast_trainer(max_steps=1))
        assert "adapter_shrink" not in ft.train(str(tmp_path / kind))


def test_answer_rows_split_prompt_and_first_answer_span():
    import datasets

    ds = datasets.Dataset.from_list([
        {"input_ids": [1, 2, 3, 4, 5, 6], "labels": [-100, -100, -100, 4, 5, -100]},
        {"input_ids": [7, 8, 9], "labels": [7, 8, 9]},            # trained on its inputs: no prompt
        {"input_ids": [1, 2, 3], "labels": [-100, -100, -100]},    # nothing labelled
        {"input_ids": [1, 2, 3, 4, 5], "labels": [-100, 2, 3, -100, 5]},  # the first span only
    ])
    assert answer_rows(ds) == [([1, 2, 3], [4, 5]), ([1], [2, 3])]
