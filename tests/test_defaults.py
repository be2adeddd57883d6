"""The size-dependent training defaults and self-replay rows (no model, cheap)."""
import pytest

from finetuning_suite.data.replay import REPLAY_PROMPTS, self_replay_rows
from finetuning_suite.data.replay import pool_prompts
from finetuning_suite.train.defaults import (MAX_EPOCHS, METHODS, REPLAY_MAX, REPLAY_MIN, REPLAY_ROW_TOKENS,
                                             TOKEN_BUDGET, choose_defaults)

SIZES = [1, 10, 12, 50, 72, 100, 199, 200, 300, 499, 500, 1000, 5000]


@pytest.mark.parametrize("method", METHODS)
def test_shape_and_ranges(method):
    for n in SIZES:
        d = choose_defaults(method, n)
        t = d["training"]
        assert set(t) >= {"learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps",
                          "warmup_steps", "lr_scheduler_type", "num_train_epochs"}
        assert 1 <= t["num_train_epochs"] <= MAX_EPOCHS
        assert t["per_device_train_batch_size"] in (4, 8) and t["gradient_accumulation_steps"] == 1
        assert 0 < t["warmup_steps"] < 1 and t["lr_scheduler_type"] == "cosine"
        assert REPLAY_MIN <= d["replay_rows"] <= REPLAY_MAX
        assert method in d["summary"] and str(n) in d["summary"]
        if method == "full":
            assert d["lora"] is None and t["learning_rate"] <= 1e-4
        else:
            assert d["lora"] == {"target_modules": "all-linear"}
            assert 1e-4 <= t["learning_rate"] <= 2e-3


@pytest.mark.parametrize("method", METHODS)
def test_monotonic_in_size(method):
    rows = [choose_defaults(method, n) for n in SIZES]
    epochs = [d["training"]["num_train_epochs"] for d in rows]
    lrs = [d["training"]["learning_rate"] for d in rows]
    batches = [d["training"]["per_device_train_batch_size"] for d in rows]
    replay = [d["replay_rows"] for d in rows]
    assert epochs == sorted(epochs, reverse=True)  # more data, fewer epochs
    assert lrs == sorted(lrs, reverse=True)        # more steps, smaller steps
    assert batches == sorted(batches) and replay == sorted(replay)


def test_small_sets_get_enough_steps_and_large_sets_a_bounded_budget():
    for n in (10, 12, 24, 72):
        d = choose_defaults("lora", n)
        t = d["training"]
        rows = n + d["replay_rows"]
        steps = t["num_train_epochs"] * -(-rows // t["per_device_train_batch_size"])
        assert steps >= 60, (n, steps)  # the old defaults gave 20 steps on 12 rows: nothing learned
    for n in (300, 1000, 5000):
        d = choose_defaults("lora", n, n_tokens=80 * n)
        tokens = d["training"]["num_train_epochs"] * (80 * n + d["replay_rows"] * REPLAY_ROW_TOKENS)
        assert tokens <= max(TOKEN_BUDGET, 80 * n + d["replay_rows"] * REPLAY_ROW_TOKENS)


def test_epochs_follow_the_token_budget():
    # the facts task (72 rows, 3,094 tokens): 6 epochs, the measured point (100% held-out, 291 s)
    assert choose_defaults("lora", 72, n_tokens=3094)["training"]["num_train_epochs"] == 6
    # same rows, four times longer: fewer epochs; a long 300-row set: one epoch
    assert choose_defaults("lora", 72, n_tokens=4 * 3094)["training"]["num_train_epochs"] == 2
    assert choose_defaults("lora", 300, n_tokens=23720)["training"]["num_train_epochs"] == 1
    # from 200 rows on, one epoch whatever the tokens (snake_case: 2 epochs lost 4 general answers)
    assert choose_defaults("lora", 300, n_tokens=13862)["training"]["num_train_epochs"] == 1
    assert choose_defaults("lora", 199, n_tokens=199 * 40)["training"]["num_train_epochs"] == 3
    assert choose_defaults("lora", 12, n_tokens=500)["training"]["num_train_epochs"] == MAX_EPOCHS
    with pytest.raises(ValueError, match="n_tokens"):
        choose_defaults("lora", 12, n_tokens=-1)


def test_lora_and_qlora_agree_full_is_gentler():
    for n in SIZES:
        lora, qlora, full = (choose_defaults(m, n) for m in METHODS)
        q = dict(qlora["training"])
        # QLoRA is chosen to save memory: it adds gradient checkpointing, nothing else differs
        assert q.pop("gradient_checkpointing") is True and "gradient_checkpointing" not in lora["training"]
        q.pop("gradient_checkpointing_kwargs")
        assert lora["training"] == q and lora["lora"] == qlora["lora"]
        assert full["training"]["learning_rate"] <= lora["training"]["learning_rate"] / 10


def test_user_epochs_are_kept_and_replay_can_be_off():
    assert choose_defaults("lora", 12, num_train_epochs=2.5)["training"]["num_train_epochs"] == 2.5
    d = choose_defaults("lora", 12, replay=False)
    assert d["replay_rows"] == 0 and "no replay" in d["summary"]


@pytest.mark.parametrize("bad", [("sft", 10), ("lora", 0), ("lora", -3), ("lora", True), ("lora", 2.5)])
def test_bad_arguments(bad):
    with pytest.raises(ValueError):
        choose_defaults(*bad)


def test_self_replay_rows_one_at_a_time_and_batched():
    calls = []

    def one(prompt):
        calls.append(prompt)
        return f"answer to {prompt}"

    rows = self_replay_rows(one, 5)
    assert [r["prompt"] for r in rows] == list(REPLAY_PROMPTS[:5]) == calls  # lazy: asks only 5
    assert all(r["completion"] == f"answer to {r['prompt']}" for r in rows)

    def batch(prompts):
        # every third answer hit the length limit (None) or came back blank
        return [None if i % 3 == 0 else ("  " if i % 3 == 1 else f" a{i} ") for i, _ in enumerate(prompts)]

    rows = self_replay_rows(batch, 4, batched=True)
    assert len(rows) == 2 and all(r["completion"].startswith("a") for r in rows)  # 8 asked, 2 usable
    assert self_replay_rows(one, 0) == []


def test_replay_prompts_are_not_the_benchmark_questions():
    import json
    from pathlib import Path

    general = Path(__file__).resolve().parent.parent / "finetuning_suite" / "data" / "builtin" / "general.jsonl"
    held_out = {json.loads(line)["prompt"] for line in general.read_text().splitlines() if line.strip()}
    assert held_out and not held_out & set(REPLAY_PROMPTS) and not held_out & set(pool_prompts())
    assert len(set(REPLAY_PROMPTS)) == len(REPLAY_PROMPTS) >= REPLAY_MAX
    assert len(set(pool_prompts())) == len(pool_prompts()) >= REPLAY_MAX
