"""Preference and reward training (issue 18) on tiny models, offline: DPO, KTO, ORPO and GRPO
through `FineTuner(stage=...)`, their data checks, rewards and batch rule. Expected values come
from the losses' definitions (DPO at policy == reference is ln 2), from a deterministic reward,
or from a second, uninterrupted run."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tiny import run_train_script

from finetuning_suite import ConfigError, DatasetError, FineTuner
from finetuning_suite.errors import TrainingError
from finetuning_suite.train.rewards import checked, reward_functions
from finetuning_suite.train.stages import grpo_batch

PREFS = [{"prompt": f"Name colour number {i}.", "chosen": "Blue.",
          "rejected": "Well, there are many colours, such as red, green and plenty more."} for i in range(16)]


def _losses(run) -> list[float]:
    return [r["loss"] for r in map(json.loads, (Path(run) / "metrics.jsonl").read_text().splitlines())
            if r.get("event") == "train" and "loss" in r]


def _logged(run, key) -> list[float]:
    return [r[key] for r in map(json.loads, (Path(run) / "metrics.jsonl").read_text().splitlines())
            if r.get("event") == "train" and isinstance(r.get(key), (int, float))]


def _adapter(folder) -> dict:
    return load_file(str(Path(folder) / "adapter_model.safetensors"))


def test_dpo_starts_at_ln2_and_its_margin_rises(tiny_llama, tmp_path):
    ft = FineTuner(tiny_llama, device="cpu", dataset_name=PREFS, stage="dpo", max_steps=8, loss_type="sigmoid",
                   learning_rate=5e-3, per_device_train_batch_size=4, logging_steps=1, warmup_steps=0,
                   save_strategy="no", lora_dropout=0.0)
    metrics = ft.train(tmp_path / "dpo")
    losses, margins = _losses(tmp_path / "dpo"), _logged(tmp_path / "dpo", "rewards/margins")
    assert losses[0] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference at step 1
    assert margins[0] == pytest.approx(0, abs=1e-6) and margins[-1] > 0.1 and losses[-1] < losses[0]
    after = metrics["after"]  # evaluated on the training rows here (16 rows: too few to hold out)
    assert after["reward_accuracy"] > 0.9 and after["reward_margin"] > 0
    record = json.loads((tmp_path / "dpo" / "finetuner_config.json").read_text())
    assert record["config"]["stage"] == "dpo" and not (tmp_path / "dpo" / "ref").exists()
    reloaded = FineTuner(str(tmp_path / "dpo"), device="cpu")  # a run folder like any other
    assert reloaded.config.training.stage == "dpo"
    assert reloaded.generate("Name colour number 3.", 6) == ft.generate("Name colour number 3.", 6)
    reloaded.export(tmp_path / "merged")  # exports like any other: a plain transformers folder
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    ids = reloaded.tokenizer("Name colour number 3.", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        assert torch.allclose(merged(input_ids=ids).logits, reloaded.model(input_ids=ids).logits, atol=1e-4)


@pytest.mark.parametrize("stage, rows", [
    ("kto", [{"prompt": f"Say {i}.", "completion": "fine" if i % 2 else "awful, dreadful", "label": bool(i % 2)}
             for i in range(16)]),
    ("orpo", PREFS)])
def test_kto_and_orpo_train_and_move_the_adapter(tiny_llama, tmp_path, stage, rows):
    ft = FineTuner(tiny_llama, device="cpu", dataset_name=rows, stage=stage, max_steps=4,
                   learning_rate=5e-3, per_device_train_batch_size=4, logging_steps=1,
                   save_strategy="no", eval_fraction=0)
    start = {n: p.detach().clone() for n, p in ft.model.named_parameters() if "lora_" in n}
    ft.train(tmp_path / stage)
    moved = max((p.detach() - start[n]).abs().max().item() for n, p in ft.model.named_parameters() if n in start)
    assert moved > 1e-4 and all(math.isfinite(x) for x in _losses(tmp_path / stage))
    assert (tmp_path / stage / "adapter_model.safetensors").is_file()


def said_yes(completions=None, **kwargs):
    """A deterministic reward: 1 for an answer that starts with "yes", else 0."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [1.0 if t.strip().lower().startswith("yes") else 0.0 for t in texts]


def test_grpo_raises_a_deterministic_reward(tiny_llama, tmp_path):
    """A tiny model first taught to answer "yes" or "no" (both, for every prompt) samples each
    about half the time; GRPO rewarding "yes" makes it say yes nearly always."""
    prompts = [f"Pick one for item {i}." for i in range(16)]
    FineTuner(tiny_llama, device="cpu", self_replay=False, retention_probe=False, method="full",
              dataset_name=[{"prompt": p, "completion": c} for p in prompts for c in ("yes", "no")],
              learning_rate=1e-2, num_train_epochs=6, save_strategy="no", eval_fraction=0).train(tmp_path / "taught")
    ft = FineTuner(str(tmp_path / "taught"), device="cpu", dataset_name=[{"prompt": p} for p in prompts],
                   stage="grpo", method="lora", reward_funcs=[said_yes], num_generations=4,
                   max_completion_length=4, max_steps=12, learning_rate=5e-3, logging_steps=1,
                   save_strategy="no", eval_fraction=0, seed=0)
    metrics = ft.train(tmp_path / "grpo")
    assert "reward_signal_warning" not in metrics  # the rewards differed within groups
    rewards = _logged(tmp_path / "grpo", "rewards/said_yes/mean")
    assert len(rewards) == 12
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert 0.2 < first < 0.8 and last > 0.9, rewards
    record = json.loads((tmp_path / "grpo" / "finetuner_config.json").read_text())
    assert record["config"]["reward_funcs"] == ["test_stages:said_yes"]  # reloadable by path


def test_an_all_equal_group_has_no_advantage_and_moves_nothing(tiny_llama, tmp_path):
    def constant(completions=None, **kwargs):
        return [1.0] * len(completions)

    ft = FineTuner(tiny_llama, device="cpu", dataset_name=[{"prompt": f"Hi {i}"} for i in range(8)],
                   stage="grpo", reward_funcs=[constant], num_generations=4, max_completion_length=6,
                   max_steps=2, learning_rate=1e-1, logging_steps=1, save_strategy="no", eval_fraction=0)
    start = {n: p.detach().clone() for n, p in ft.model.named_parameters() if "lora_" in n}
    metrics = ft.train(tmp_path / "flat")
    # the run says why nothing was learned, and what to change
    assert metrics["reward_signal_warning"].startswith(
        "GRPO had almost no signal to learn from: in 100% of the groups all 4 completions got the same reward")
    assert "length:N" in metrics["reward_signal_warning"]
    assert _logged(tmp_path / "flat", "frac_reward_zero_std") == [1.0, 1.0]
    assert _logged(tmp_path / "flat", "grad_norm") == [0.0, 0.0]
    assert all((p.detach() - start[n]).abs().max().item() == 0 for n, p in ft.model.named_parameters() if n in start)


# -- GRPO's batch rule ---------------------------------------------------------------------------
def test_the_grpo_batch_holds_whole_groups():
    assert grpo_batch(None, 4, 1, 1, given=False) == 8          # two prompts' groups
    assert grpo_batch(6, 4, 1, 1, given=False) == 8             # rounded up to whole groups
    assert grpo_batch(2, 4, 2, 1, given=False) == 2             # 2 x 2 processes = one group
    assert grpo_batch(3, 2, 1, 2, given=True) == 3              # 3 x 2 accumulation = 6 = 3 groups
    with pytest.raises(ConfigError, match=r"per_device_train_batch_size=3 x 1 process.* "
                                          r"num_generations=4. Pass per_device_train_batch_size=4"):
        grpo_batch(3, 4, 1, 1, given=True)


def test_a_given_batch_that_splits_no_groups_is_refused_before_training(tiny_llama, tmp_path):
    ft = FineTuner(tiny_llama, device="cpu", dataset_name=[{"prompt": "Hi", "answer": "1"}] * 8,
                   stage="grpo", reward_funcs=["exact_match"], num_generations=4,
                   per_device_train_batch_size=6, max_steps=1)
    with pytest.raises(ConfigError, match=r"6 answers per step .* Pass per_device_train_batch_size=4"):
        ft.train(tmp_path / "run")
    assert not (tmp_path / "run").exists()


# -- rewards -------------------------------------------------------------------------------------
def test_builtin_rewards_score_by_hand():
    (exact, regex, valid, length), _ = reward_functions(["exact_match", "regex:\\d+", "json", "length:4"])
    completions = ["12", " 12 ", "twelve", '{"a": 1}']
    assert exact(prompts=["p"] * 4, completions=completions, answer=["12", "12", "12", "12"]) == [1.0, 1.0, 0.0, 0.0]
    assert regex(prompts=["p"] * 4, completions=completions) == [1.0, 1.0, 0.0, 0.0]
    assert valid(prompts=["p"] * 4, completions=completions) == [0.0, 0.0, 0.0, 1.0]
    assert length(prompts=["p"], completions=["one two three four"]) == [1.0]
    assert length(prompts=["p"], completions=["one two"]) == [0.5]
    conversation = [[{"role": "assistant", "content": "12"}]]
    assert exact(prompts=["p"], completions=conversation, answer=["12"]) == [1.0]


def test_partial_credit_rewards_score_by_hand():
    (contains, brevity), _ = reward_functions(["contains:answer", "brevity:2"])
    completions = ["5 + 7 = 12", "It is 12.", "112", "12", "Twelve"]
    # a whole word, any case: "112" does not contain the answer 12
    assert contains(prompts=["p"] * 5, completions=completions, answer=["12"] * 5) == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert contains(prompts=["p"], completions=["It's PARIS."], answer=["paris"]) == [1.0]
    # at most 2 words: full credit; 5 words: 2/5; 3 words: 2/3; nothing said: nothing earned
    assert brevity(prompts=["p"] * 5, completions=completions) == \
        [pytest.approx(2 / 5), pytest.approx(2 / 3), 1.0, 1.0, 1.0]
    assert brevity(prompts=["p"], completions=["   "]) == [0.0]
    with pytest.raises(TrainingError, match="no 'answer' column to look for"):
        contains(prompts=["p"], completions=["x"])


@pytest.mark.parametrize("function, message", [
    (lambda **kw: 1 / 0, "raised ZeroDivisionError"),
    (lambda completions=None, **kw: [1.0], "returned 1 values for 2 completions"),
    (lambda completions=None, **kw: [1.0, float("nan")], "returned nan for completion 1"),
    (lambda **kw: None, "returned None values"),
])
def test_a_broken_reward_function_names_itself_and_the_row(function, message):
    function.__name__ = "my_reward"
    wrapped = checked("my_reward", function)
    with pytest.raises(TrainingError, match=f"reward function 'my_reward' {message}"):
        wrapped(prompts=["What is 2 + 2?", "x"], completions=["4", "5"])


@pytest.mark.parametrize("spec, message", [("nope", "not a built-in"), ("regex:(", "not a valid regular"),
                                           ("length:x", "target length"), ("brevity:0", "most words"),
                                           ("nomodule_xyz:f", "cannot import")])
def test_bad_reward_names_are_refused_with_the_fix(spec, message):
    with pytest.raises(ConfigError, match=message):
        reward_functions([spec])


# -- bad rows ------------------------------------------------------------------------------------
BAD_ROWS = [
    ("dpo", [{"prompt": "a", "chosen": "b"}], "needs rows of prompt \\+ chosen \\+ rejected"),
    ("dpo", [{"prompt": "a", "chosen": "b", "rejected": ""}], "row 1: 'rejected' is missing or empty"),
    ("dpo", [{"prompt": "a", "chosen": "same", "rejected": "same"}], "row 1: chosen and rejected are the same"),
    ("dpo", [{"prompt": " ", "chosen": "b", "rejected": "c"}], "row 1: the prompt is missing or empty"),
    ("dpo", [{"prompt": "a", "chosen": "b", "rejected": "c"},
             {"prompt": [{"role": "user", "content": "a"}], "chosen": [{"role": "assistant", "content": "b"}],
              "rejected": [{"role": "assistant", "content": "c"}]}], r"dataset_name\[1\]: column .prompt. holds a list .* fix this row"),
    ("kto", [{"prompt": "a", "completion": "b", "label": "yes"}], "row 1: label='yes' must be true"),
    ("grpo", [{"question": "a"}], "needs rows with a prompt"),
]


@pytest.mark.parametrize("stage, rows, message", BAD_ROWS)
def test_bad_stage_rows_are_refused_naming_the_row(tiny_llama, stage, rows, message):
    extra = {"reward_funcs": ["exact_match"]} if stage == "grpo" else {}
    ft = FineTuner(tiny_llama, device="cpu", dataset_name=rows, stage=stage, **extra)
    with pytest.raises(DatasetError, match=message):
        ft.preprocess_data()


def test_implicit_prompts_and_stage_settings_for_the_wrong_stage(tiny_llama):
    conversation = [{"prompt": None,
                     "chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
                     "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}]}]
    ft = FineTuner(tiny_llama, device="cpu", dataset_name=conversation * 2, stage="dpo")
    row = ft.preprocess_data()[0]
    assert row["prompt"][-1] == {"role": "user", "content": "Hi"}
    assert row["chosen"] == [{"role": "assistant", "content": "Hello."}]
    with pytest.raises(ConfigError, match="num_generations=4: applies to stage='grpo' only"):
        FineTuner(tiny_llama, stage="dpo", num_generations=4)
    with pytest.raises(ConfigError, match="stage='grpo' needs reward functions"):
        FineTuner(tiny_llama, stage="grpo")


# -- resume ----------------------------------------------------------------------------------------
_run = run_train_script


def test_a_killed_dpo_run_resumes_to_the_uninterrupted_result(tiny_llama, tmp_path):
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in PREFS * 2))
    _run(tiny_llama, data, tmp_path / "straight", "--stage", "dpo")
    crashed = tmp_path / "crashed"
    proc = _run(tiny_llama, data, crashed, "--stage", "dpo", "--kill-at", 5, check=False)
    assert proc.returncode == -9, proc.stderr[-2000:]
    _run(tiny_llama, data, crashed, "--stage", "dpo", "--resume")
    a, b = _adapter(tmp_path / "straight"), _adapter(crashed)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, f"resumed DPO adapter differs from the uninterrupted one by {worst}"


def test_grpo_samples_its_groups_with_the_generation_settings():
    from finetuning_suite.config.options import FinetuneConfig
    from finetuning_suite.train.stages import stage_settings

    chosen = stage_settings(FinetuneConfig.from_flat({"stage": "grpo", "reward_funcs": ["exact_match"]}))
    assert (chosen["temperature"], chosen["top_p"], chosen["top_k"]) == (0.7, 0.9, 50)  # not TRL's 1.0/1.0/0
    given = stage_settings(FinetuneConfig.from_flat({"stage": "grpo", "reward_funcs": ["exact_match"],
                                                     "temperature": 1.2, "top_k": 0}))
    assert (given["temperature"], given["top_k"]) == (1.2, 0)
    assert "temperature" not in stage_settings(FinetuneConfig.from_flat({"stage": "dpo"}))
