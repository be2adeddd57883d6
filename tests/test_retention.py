"""Keeping what the model knew (issue 17): the retention probe counts right, and self-replay
distillation keeps a model's outputs on general text near the base model's while it learns a
task. Expected values are written by hand or measured against the base model itself."""
from __future__ import annotations

import pytest
import torch

from finetuning_suite import FineTuner
from finetuning_suite.infer.retention import load_items, probe_items, retention, score
from finetuning_suite.train.distill import (SOFT_IDS, SOFT_LOGP, SOFT_MASK, TeacherCollator,
                                            add_teacher_targets, without_targets)
from finetuning_suite.train.loss import labelled_cross_entropy

ITEMS = [{"id": "a", "messages": [{"role": "user", "content": "Capital of France?"}], "check": {"any": ["Paris"]}},
         {"id": "b", "messages": [{"role": "user", "content": "2 + 2?"}], "check": {"any": ["4", "four"]}},
         {"id": "c", "messages": [{"role": "user", "content": "Opposite of hot?"}], "check": {"any": ["cold"]}}]


def test_retention_counts_kept_lost_and_gained_against_the_base():
    before = ["It is Paris.", "2 + 2 = 5", "Cold."]          # right, wrong, right
    after = ["Lyon, I think.", "It is four.", "cold"]          # lost a, gained b, kept c
    kept = retention(ITEMS, before, after)
    assert (kept.asked, kept.base_right, kept.kept, kept.gained) == (3, 2, 1, 1)
    assert [item["id"] for item in kept.lost] == ["a"] and kept.share == 0.5
    assert kept.line().startswith("kept 1 of 2 general answers it knew (3 prompts asked); lost: 'Capital of France?'")
    assert "lower learning_rate" in kept.warning()
    assert retention(ITEMS, before, before).warning() is None  # nothing lost: no warning
    assert score(ITEMS, after) == [False, True, True]


def test_the_probe_reads_the_dev_half_only():
    dev, test = load_items("dev"), load_items("test")
    probe = probe_items()
    assert len(probe) == 40 and probe == dev[:40]
    assert not {i["id"] for i in probe} & {i["id"] for i in test}


# -- distillation --------------------------------------------------------------------------------
def test_one_hot_teacher_targets_give_the_plain_cross_entropy():
    """Soft targets whose whole mass is on the label are the hard label: same loss, same
    gradient (the distilled path is only a different target, never a different scale)."""
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    head = torch.nn.Linear(8, 11, bias=False)
    labels = torch.tensor([[-100, 3, 4, -100, 7], [-100, -100, 2, 9, 1]])
    targets = labels[:, 1:][labels[:, 1:] != -100]
    k = 4
    ids = torch.zeros(len(targets), k, dtype=torch.long)
    ids[:, 0] = targets
    logp = torch.full((len(targets), k), -1e4)
    logp[:, 0] = 0.0
    soft = {SOFT_IDS: ids, SOFT_LOGP: logp, SOFT_MASK: torch.tensor([True, False, True, True, False, True])}
    hard = labelled_cross_entropy(hidden, labels, head, num_items_in_batch=len(targets))
    (g_hard,) = torch.autograd.grad(hard, hidden)
    distilled = labelled_cross_entropy(hidden, labels, head, num_items_in_batch=len(targets), soft=soft)
    (g_soft,) = torch.autograd.grad(distilled, hidden)
    assert distilled.item() == pytest.approx(hard.item(), abs=1e-5)
    assert torch.allclose(g_soft, g_hard, atol=1e-6)


def test_the_collator_aligns_targets_with_the_labelled_positions():
    from datasets import Dataset

    from finetuning_suite.train.trainer_config import default_collator

    class Tok:  # what DataCollatorForSeq2Seq needs of a tokenizer, for two hand-made rows
        pad_token_id, padding_side, model_input_names = 0, "right", ["input_ids", "attention_mask"]

        def pad(self, features, **kw):
            longest = max(len(f["input_ids"]) for f in features)
            return {"input_ids": torch.tensor([f["input_ids"] + [0] * (longest - len(f["input_ids"])) for f in features]),
                    "attention_mask": torch.tensor([f["attention_mask"] + [0] * (longest - len(f["attention_mask"]))
                                                    for f in features])}

    task = {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7]}
    replay = {"input_ids": [5, 8, 9, 2], "attention_mask": [1] * 4, "labels": [-100, -100, 9, 2],
              "teacher_ids": [[9, 1], [2, 3]], "teacher_logp": [[-0.1, -2.0], [-0.2, -1.5]]}
    collate = TeacherCollator(default_collator(Tok(), None, False, on_cpu=True), k=2)
    batch = collate([{**task, "teacher_ids": [], "teacher_logp": []}, replay])
    # labelled positions in loss order: row 0 -> labels 6, 7 (hard); row 1 -> 9, 2 (soft)
    assert batch[SOFT_MASK].tolist() == [False, False, True, True]
    assert batch[SOFT_IDS][2:].tolist() == [[9, 1], [2, 3]]
    assert "teacher_ids" not in batch


def _kl_to_base(model, base_logits, prompts_ids):
    with torch.inference_mode():
        total = 0.0
        for ids, base in zip(prompts_ids, base_logits):
            logp = torch.log_softmax(model(input_ids=ids).logits.float(), -1)
            total += torch.nn.functional.kl_div(logp, torch.log_softmax(base, -1), log_target=True,
                                                reduction="batchmean").item()
    return total / len(prompts_ids)


def _task_logp(ft) -> float:
    """Mean log-probability of the task's answers (the colour named) under the model."""
    from finetuning_suite.infer.stage_eval import answer_logp

    return sum(answer_logp(ft.model, ft.tokenizer, ft.chat_format, f"Say {w}", w)
               for w in ["red", "green", "blue", "cyan"]) / 4


@pytest.mark.parametrize("variant", ["distilled"])
def test_distilled_replay_keeps_general_outputs_near_the_base(tiny_llama, tmp_path, variant):
    """A tiny chat model learns a task (say the colour named) with, in turn: no replay, replay
    trained on the base's answers, and replay distilled towards the base's distribution. On
    general prompts held back from all training, the distilled model's next-token distribution
    stays closest to the base's (KL), and every variant learns the task."""
    import datasets

    from finetuning_suite.data.replay import pool_prompts

    general = list(pool_prompts())
    replay_prompts, held_back = general[:24], general[200:216]

    def trained(kind):
        ft = FineTuner(tiny_llama, device="cpu", self_replay=False, max_steps=30, learning_rate=2e-2,
                       per_device_train_batch_size=8, save_strategy="no", warmup_steps=0,
                       dataset_name=[{"prompt": f"Say {w}", "completion": w}
                                     for w in ["red", "green", "blue", "cyan"] * 6], eval_fraction=0)
        if kind == "none":
            return ft, None
        outs = ft.inference_handler.generate_batch(replay_prompts, ft.model, ft.tokenizer, "cpu", 12)
        rows = [{"prompt": p, "completion": o.text or "ok"} for p, o in zip(replay_prompts, outs)]
        replay = ft.preprocessor(datasets.Dataset.from_list(rows), ft.tokenizer, ft.model.config,
                                 chat_format=ft.chat_format)
        return ft, (add_teacher_targets(ft.model, replay, "cpu") if kind == "distilled" else replay)

    def run(kind):
        ft, replay = trained(kind)
        ft.preprocess_data()
        task = ft.prepared.train
        if replay is not None:
            if "teacher_ids" in replay.column_names:
                task = without_targets(task)
            ft.prepared.train = datasets.concatenate_datasets([task, replay])
        ids = [torch.tensor([ft.tokenizer(ft.chat_format.prompt_text(p, ft.tokenizer)[0],
                                          add_special_tokens=False)["input_ids"]]) for p in held_back]
        with torch.inference_mode():
            base = [ft.model(input_ids=i).logits.float() for i in ids]
        task_before = _task_logp(ft)
        ft.train(tmp_path / kind)
        return _kl_to_base(ft.model, base, ids), _task_logp(ft) - task_before

    kl = {kind: run(kind) for kind in ("none", "answers", variant)}
    assert all(gain > 2.0 for _, gain in kl.values()), kl  # the task's answers: > 2 nats likelier
    assert kl[variant][0] < kl["answers"][0] < kl["none"][0], kl
