"""Evaluation: rows with references, generation metrics (exact match, chrF, EOS rate) and
token-weighted loss/perplexity, each checked against a hand computation."""
import math

import pytest
import sacrebleu
import torch
from datasets import Dataset

from finetuning_suite import ConfigError, DefaultInferenceHandler, FineTuner
from finetuning_suite.data.formats import detect_format
from finetuning_suite.infer.evaluate import (exact_match, generation_metrics, loss_metrics,
                                             reference_rows)
from finetuning_suite.infer.generation import Generation
from finetuning_suite.train.trainer_config import default_collator


# -- reference rows -----------------------------------------------------------------------------
def rows_of(records, chat_model):
    ds = Dataset.from_list(records)
    return reference_rows(ds, detect_format(ds.column_names), chat_model)


def test_pairs_give_prompt_and_reference():
    records = [{"prompt": "2+2?", "completion": "4"}, {"prompt": "3+3?", "completion": "  "},
               {"prompt": "", "completion": "x"}]
    assert rows_of(records, True) == [{"prompt": "2+2?", "reference": "4"}]
    assert rows_of([{"question": "Q", "answer": "A"}], False) == [{"prompt": "Q", "reference": "A"}]


def test_alpaca_prompt_follows_the_model_kind():
    records = [{"instruction": "Add", "input": "1 and 2", "output": "3"}]
    assert rows_of(records, True) == [{"prompt": "Add\n\n1 and 2", "reference": "3"}]
    base = rows_of(records, False)[0]
    assert base["reference"] == "3" and base["prompt"].startswith("### Instruction:\nAdd")
    assert base["prompt"].endswith("### Response:\n")


def test_chat_rows_give_history_and_last_assistant_turn():
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi, I am Nia."},
                    {"role": "assistant", "content": "Hello Nia!"}, {"role": "user", "content": "My name?"},
                    {"role": "assistant", "content": "Nia."}, {"role": "user", "content": "Thanks"}]
    records = [{"messages": conversation},
               {"messages": [{"role": "user", "content": "no answer"}]},
               {"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]}]
    (row,) = rows_of(records, True)
    assert row == {"prompt": conversation[:4], "reference": "Nia."}
    (flat,) = rows_of(records, False)  # seq2seq: 'role: content' lines, as in training
    assert flat == {"prompt": "system: Be brief.\nuser: Hi, I am Nia.\nassistant: Hello Nia!\nuser: My name?",
                    "reference": "Nia."}
    sharegpt = [{"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}]
    assert rows_of(sharegpt, True) == [{"prompt": [{"role": "user", "content": "Q"}], "reference": "A"}]


def test_text_rows_have_no_reference():
    assert rows_of([{"text": "just text"}], True) == []


# -- generation metrics -------------------------------------------------------------------------
class Canned:
    """A handler that answers from a table and records the batches it was given."""

    def __init__(self, answers):
        self.answers, self.batches = answers, []

    def generate_batch(self, prompts, model, tokenizer, device, max_length, *, stop=None):
        self.batches.append(list(prompts))
        return [Generation(self.answers[p][0], 3, 2, self.answers[p][1]) for p in prompts]


ANSWERS = {"Capital of France?": ("Paris", True), "2+2?": (" 4 ", True),
           "Longest river on Earth, please?": ("The Amazon", False), "Colour of the sky?": ("blue", True),
           "Hi": ("Hello!", True)}
ROWS = [{"prompt": "Capital of France?", "reference": "Paris"},      # match
        {"prompt": "2+2?", "reference": "4"},                        # match after stripping
        {"prompt": "Longest river on Earth, please?", "reference": "The Nile"},  # miss, hit the limit
        {"prompt": "Colour of the sky?", "reference": "Blue"},       # miss (case)
        {"prompt": "Hi", "reference": "Hello!"}]                     # match


def test_generation_metrics_by_hand():
    handler = Canned(ANSWERS)
    m = generation_metrics(handler, ROWS, None, None, "cpu", max_new_tokens=8, batch_size=2)
    assert m["n"] == 5
    assert m["exact_match"] == pytest.approx(3 / 5)
    assert m["eos_rate"] == pytest.approx(4 / 5)
    generated = [ANSWERS[r["prompt"]][0] for r in ROWS]
    assert m["chrf"] == pytest.approx(sacrebleu.corpus_chrf(generated, [[r["reference"] for r in ROWS]]).score)
    assert 0 < m["chrf"] < 100 and m["seconds"] >= 0
    # every row comes back, in the rows' order, whatever order the batches ran in
    assert m["samples"] == [{"prompt": r["prompt"], "reference": r["reference"], "generated": g}
                            for r, g in zip(ROWS, generated)]
    assert [len(b) for b in handler.batches] == [2, 2, 1]
    assert sorted(p for b in handler.batches for p in b) == sorted(r["prompt"] for r in ROWS)


def test_exact_match_and_chrf_extremes():
    assert exact_match(["a", " b", "c"], ["a", "b ", "C"]) == pytest.approx(2 / 3)
    handler = Canned({"x": ("same answer", True)})
    m = generation_metrics(handler, [{"prompt": "x", "reference": "same answer"}], None, None, "cpu",
                           max_new_tokens=4)
    assert m["exact_match"] == 1.0 and m["chrf"] == pytest.approx(100.0) and m["eos_rate"] == 1.0


def test_a_handler_without_batches_is_called_per_prompt():
    class OneByOne:
        def generate(self, prompt_text, model, tokenizer, device, max_length):
            return ANSWERS[prompt_text][0]

    m = generation_metrics(OneByOne(), ROWS, None, None, "cpu", max_new_tokens=8)
    assert m["exact_match"] == pytest.approx(3 / 5) and m["eos_rate"] is None


def test_no_rows_and_bad_batch_size():
    assert generation_metrics(Canned({}), [], None, None, "cpu", max_new_tokens=4)["n"] == 0
    with pytest.raises(ConfigError, match="batch_size=0"):
        generation_metrics(Canned(ANSWERS), ROWS, None, None, "cpu", max_new_tokens=4, batch_size=0)


def test_generation_metrics_on_a_tiny_model(tiny_llama):
    ft = FineTuner(tiny_llama, device="cpu")
    handler = DefaultInferenceHandler()
    rows = [{"prompt": p, "reference": "x"} for p in ("Hi", "What is two plus two?", "Name a colour")]
    rows.append({"prompt": [{"role": "user", "content": "Hello"}], "reference": "x"})
    m = generation_metrics(handler, rows, ft.model, ft.tokenizer, "cpu", max_new_tokens=5, batch_size=3)
    one_by_one = [handler.generate(r["prompt"], ft.model, ft.tokenizer, "cpu", 5) for r in rows]
    assert [s["generated"] for s in m["samples"]] == one_by_one
    assert m["samples"][3]["prompt"] == "user: Hello"
    assert m["n"] == 4 and 0 <= m["eos_rate"] <= 1


# -- loss -------------------------------------------------------------------------------------
def hand_loss_causal(model, examples):
    """Sum of -log p(label) over labelled next tokens / their count; one unpadded example at a time."""
    total, count = 0.0, 0
    with torch.no_grad():
        for ex in examples:
            ids = torch.tensor([ex["input_ids"]])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
            for t in range(1, len(ex["labels"])):
                if ex["labels"][t] != -100:
                    total -= logp[t - 1, ex["labels"][t]].item()
                    count += 1
    return total / count, count


def causal_examples():
    # different lengths and numbers of labelled tokens, so per-token and per-example means differ
    raw = [([5, 6, 7, 8, 9, 10], [-100, -100, -100, 8, 9, 10]),
           ([11, 12, 13], [-100, -100, 13]),
           ([20, 21, 22, 23, 24, 25, 26, 27, 28], [-100, -100, 22, 23, 24, 25, 26, 27, 28]),
           ([30, 31, 32, 33], [-100, 31, -100, 33])]
    return [{"input_ids": i, "attention_mask": [1] * len(i), "labels": l} for i, l in raw]


def test_loss_is_token_weighted_and_matches_a_hand_computation(tiny_llama):
    ft = FineTuner(tiny_llama, device="cpu")
    examples = causal_examples()
    ds = Dataset.from_list(examples)
    collator = default_collator(ft.tokenizer, ft.model, False, on_cpu=True)
    ft.model.train()
    m = loss_metrics(ft.model, ds, collator, batch_size=3)
    assert ft.model.training  # restored
    ft.model.eval()
    expected, count = hand_loss_causal(ft.model, examples)
    assert m["tokens"] == count == 3 + 1 + 7 + 2 and m["n"] == 4
    assert m["loss"] == pytest.approx(expected, rel=1e-4)
    assert m["perplexity"] == pytest.approx(math.exp(expected), rel=1e-4)
    assert loss_metrics(ft.model, ds, collator, batch_size=1)["loss"] == pytest.approx(m["loss"], rel=1e-5)
    assert not ft.model.training


def test_loss_on_a_seq2seq_model(tiny_t5):
    ft = FineTuner(tiny_t5, device="cpu")
    examples = [{"input_ids": [5, 6, 7, 1], "attention_mask": [1] * 4, "labels": [8, 9, 1]},
                {"input_ids": [10, 1], "attention_mask": [1] * 2, "labels": [11, 12, 13, 14, 1]}]
    collator = default_collator(ft.tokenizer, ft.model, True, on_cpu=True)
    m = loss_metrics(ft.model, Dataset.from_list(examples), collator, batch_size=2)
    ft.model.eval()  # no dropout in the reference either
    total, count = 0.0, 0
    with torch.no_grad():  # the model's own mean loss, one example at a time, weighted by length
        for ex in examples:
            out = ft.model(input_ids=torch.tensor([ex["input_ids"]]), labels=torch.tensor([ex["labels"]]))
            total += out.loss.item() * len(ex["labels"])
            count += len(ex["labels"])
    assert m["tokens"] == count == 8
    assert m["loss"] == pytest.approx(total / count, rel=1e-4)


def test_loss_needs_labelled_tokens(tiny_llama):
    ft = FineTuner(tiny_llama, device="cpu")
    ds = Dataset.from_list([{"input_ids": [1, 2], "attention_mask": [1, 1], "labels": [-100, -100]}])
    with pytest.raises(ConfigError, match="no labelled tokens"):
        loss_metrics(ft.model, ds, default_collator(ft.tokenizer, ft.model, False, on_cpu=True))
    with pytest.raises(ConfigError, match="input_ids and labels"):
        loss_metrics(ft.model, Dataset.from_list([{"text": "x"}]), None)


# -- the real model -------------------------------------------------------------------------
@pytest.mark.slow
def test_embedded_generation_metrics(embedded):
    rows = [{"prompt": "What is the capital of France? Answer with one word.", "reference": "Paris"},
            {"prompt": "What is the capital of Japan? Answer with one word.", "reference": "Tokyo"}]
    m = generation_metrics(DefaultInferenceHandler(), rows, embedded.model, embedded.tokenizer, "cpu",
                           max_new_tokens=20)
    assert m["n"] == 2 and m["eos_rate"] == 1.0
    assert "Paris" in m["samples"][0]["generated"] and "Tokyo" in m["samples"][1]["generated"]


# -- one split, as FineTuner.evaluate uses it -------------------------------------------------
def test_evaluate_split_on_a_tiny_model(tiny_llama):
    from finetuning_suite.data.preprocessing import DefaultPreprocessor
    from finetuning_suite.infer.evaluate import evaluate_split

    ft = FineTuner(tiny_llama, device="cpu", max_length=1000,
                   preprocessor=DefaultPreprocessor(column_map={"q": "prompt", "a": "completion"}))
    raw = Dataset.from_list([{"q": f"Code {i}?", "a": "AB" * (i + 1)} for i in range(3)])
    tokenized = ft.preprocessor(raw, ft.tokenizer, ft.model.config)
    m = evaluate_split(ft, raw, tokenized, chat_format=ft.chat_format, batch_size=2)
    expected = loss_metrics(ft.model, tokenized, default_collator(ft.tokenizer, ft.model, False, on_cpu=True))
    assert m["loss"] == pytest.approx(expected["loss"]) and m["loss_tokens"] == expected["tokens"]
    assert m["n"] == 3 and [s["reference"] for s in m["samples"]] == ["AB", "ABAB", "ABABAB"]
    longest = len(ft.tokenizer("ABABAB", add_special_tokens=False)["input_ids"])
    assert m["max_new_tokens"] == max(16, 2 * longest + 8)  # not the 1000 of max_length
    text = evaluate_split(ft, Dataset.from_list([{"text": "plain"}]), None, chat_format=ft.chat_format)
    assert text["n"] == 0 and text["loss"] is None and text["exact_match"] is None


def test_evaluate_on_a_dataset_dict_scores_its_validation_split(tiny_llama):
    from datasets import DatasetDict

    ft = FineTuner(tiny_llama, device="cpu", max_length=8)
    data = DatasetDict(train=Dataset.from_list([{"prompt": f"T{i}?", "completion": "train"} for i in range(5)]),
                       validation=Dataset.from_list([{"prompt": "V?", "completion": "held out"}]))
    m = ft.evaluate(data)
    assert m["n"] == 1 and m["samples"][0]["reference"] == "held out"


def test_run_record_keeps_ten_samples_per_evaluation():
    from finetuning_suite.train.runinfo import _trimmed

    ev = {"exact_match": 0.5, "samples": [{"i": i} for i in range(25)]}
    out = _trimmed({"train_loss": 1.0, "before": ev, "after": ev})
    assert len(out["after"]["samples"]) == 10 and out["after"]["samples_total"] == 25
    assert out["before"]["exact_match"] == 0.5 and len(ev["samples"]) == 25  # the input is untouched
