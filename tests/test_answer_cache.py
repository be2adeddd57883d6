"""The answer cache (infer/answer_cache.py): a second ask of an unchanged model comes from disk,
a changed model or template asks again, and the off switch works."""
from __future__ import annotations

import torch

from finetuning_suite import FineTuner
from finetuning_suite.infer.answer_cache import cached_answers, model_fingerprint


def _counting(answers):
    calls = []

    def compute(prompts):
        calls.append(list(prompts))
        return [answers.get(p) for p in prompts]
    return compute, calls


def test_same_model_is_asked_once_a_changed_one_again(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUNING_SUITE_CACHE", str(tmp_path))
    ft = FineTuner(tiny_llama, device="cpu")
    compute, calls = _counting({"a": "x", "b": None})
    args = ("self_replay", ft.model, ft.tokenizer, ft.chat_format, ["a", "b"], 8)
    assert cached_answers(*args, compute) == ["x", None]
    assert cached_answers(*args, compute) == ["x", None] and len(calls) == 1
    assert cached_answers("self_replay", ft.model, ft.tokenizer, ft.chat_format, ["a"], 8, compute) == ["x"]
    assert len(calls) == 2  # another prompt list is another question
    before = model_fingerprint(ft.model)
    with torch.no_grad():
        next(p for p in ft.model.parameters()).view(-1)[0] += 1e-3  # the model changed in memory
    assert model_fingerprint(ft.model) != before
    cached_answers(*args, compute)
    assert len(calls) == 3
    monkeypatch.setenv("FINETUNING_SUITE_ANSWER_CACHE", "0")
    cached_answers(*args, compute)
    assert len(calls) == 4


def test_a_second_run_reuses_the_base_answers_and_trains_the_same(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUNING_SUITE_CACHE", str(tmp_path / "cache"))
    rows = [{"prompt": f"Say {w}", "completion": w} for w in ("red", "green", "blue", "cyan")]

    def run(name):
        ft = FineTuner(tiny_llama, device="cpu", dataset_name=rows, max_steps=2, save_strategy="no",
                       self_replay_rows=8)
        metrics = ft.train(tmp_path / name)
        return ft, metrics

    first, m1 = run("one")
    files = sorted(p.name for p in (tmp_path / "cache" / "answers").iterdir())
    assert [f.split("-")[0] for f in files] == ["retention_probe", "self_replay"]
    second, m2 = run("two")
    assert sorted(p.name for p in (tmp_path / "cache" / "answers").iterdir()) == files  # same keys: read back
    assert m2["train_loss"] == m1["train_loss"]  # the same replay rows, the same training
    assert m2["retention"]["base_right"] == m1["retention"]["base_right"]
    assert second.data_stats["self_replay_rows"] == first.data_stats["self_replay_rows"]
