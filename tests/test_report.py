"""The run report: metrics.jsonl from a real (tiny) Trainer run, TensorBoard events readable by
tensorboard's own reader, the loss-curve PNG and report.html; the FLOP count and peak probe."""
from __future__ import annotations

import json
import os

import pytest
import torch

from finetuning_suite.train.meter import (METRICS_FILE, RunReportCallback, attention_seq_len,
                                          estimate_flops_per_token, measure_matmul_peak,
                                          read_metrics, tensorboard_available)
from finetuning_suite.train.report import write_report
from tiny import build, smol_tokenizer

STEPS = 4


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    return build("llama", tmp_path_factory.mktemp("report_model") / "llama")


def _lora_model(path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            task_type="CAUSAL_LM"))


def _dataset(n, seed):
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(6, 20, (1,), generator=g))
        ids = torch.randint(10, 200, (length,), generator=g).tolist()
        rows.append({"input_ids": ids, "attention_mask": [1] * length, "labels": list(ids)})
    return Dataset.from_list(rows)


@pytest.fixture(scope="module")
def trained_run(tiny_llama_dir, tmp_path_factory):
    """A real Trainer run: LoRA on the tiny Llama, the callback, TensorBoard, token counting."""
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    assert tensorboard_available()
    out = tmp_path_factory.mktemp("report_run")
    saved = os.environ.pop("TENSORBOARD_LOGGING_DIR", None)
    tok = smol_tokenizer()
    model = _lora_model(tiny_llama_dir)
    fpt = estimate_flops_per_token(model, seq_len=16)
    args = TrainingArguments(output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=4,
                             learning_rate=5e-3, logging_steps=1, eval_strategy="steps", eval_steps=2,
                             save_strategy="no", report_to=["tensorboard"], disable_tqdm=True,
                             include_num_input_tokens_seen="non_padding", use_cpu=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=_dataset(32, 0), eval_dataset=_dataset(4, 1),
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True),
                      callbacks=[RunReportCallback(out, flops_per_token=fpt, peak_flops=1e11)])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 32-wide model gains nothing from threads, and on shared cores
    try:                      # each OpenMP barrier waits for a descheduled thread (6x slower)
        trainer.train()
    finally:
        torch.set_num_threads(threads)
        if saved is not None:
            os.environ["TENSORBOARD_LOGGING_DIR"] = saved
    return out


def test_metrics_jsonl_from_a_real_run(trained_run):
    lines = (trained_run / METRICS_FILE).read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is strict JSON
    assert records[0]["event"] == "start" and records[0]["tokens_counted"] == "non_padding"
    train = [r for r in records if r["event"] == "train"]
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    for r in train:
        assert r["loss"] > 0 and r["learning_rate"] >= 0 and r["grad_norm"] is not None
        assert r["tokens_per_s"] > 0 and r["tokens_per_s_avg"] > 0 and 0 < r["mfu"]
        assert r["elapsed_s"] >= 0 and r["epoch"] > 0
    assert [r["num_input_tokens_seen"] for r in train] == sorted(r["num_input_tokens_seen"] for r in train)
    evals = [r for r in records if r["event"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4] and all(r["eval_loss"] > 0 for r in evals)
    assert records[-1]["event"] == "summary" and records[-1]["tokens_per_s_avg"] > 0


def test_tensorboard_events_are_readable(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = [p.parent for p in (trained_run / "runs").rglob("events.out.tfevents.*")]
    assert runs, "transformers 5.x writes events under <output_dir>/runs/<date>_<host>/"
    acc = EventAccumulator(str(runs[0]))
    acc.Reload()
    assert "train/loss" in acc.Tags()["scalars"]
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, STEPS + 1))


def test_report_from_a_real_run(trained_run):
    from PIL import Image

    before = {"exact_match": 0.1, "eval_loss": 5.0,
              "samples": [{"prompt": "p1 <script>alert(1)</script>", "reference": "r1", "generated": "b1"},
                          {"prompt": "p2", "reference": "r2 & co", "generated": "b2"}]}
    after = {"exact_match": 0.9, "eval_loss": 1.0,
             "samples": [{"prompt": "p2", "reference": "r2 & co", "generated": "a2"},
                         {"prompt": "p1 <script>alert(1)</script>", "reference": "r1", "generated": "a1"}]}
    record = {"model": {"source": "tiny-llama-<test>"}, "lora": {"r": 4, "lora_alpha": 8,
                                                                  "target_modules": ["q_proj", "v_proj"]},
              "data": {"dataset": "random tokens"}, "config": {"model": {"model_id": "tiny"}, "lora_r": 4},
              "versions": {"torch": torch.__version__, "transformers": "5.x"}}
    paths = write_report(trained_run, record, before, after)
    with Image.open(paths["loss_curve"]) as img:
        assert img.format == "PNG" and img.size[0] > 0 and img.size[1] > 0
    page = paths["report"].read_text()
    assert "tiny-llama-&lt;test&gt;" in page and "LoRA: r=4, alpha=8" in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "r2 &amp; co" in page and "random tokens" in page and "lora_r: 4" in page
    assert "+0.8" in page and "-4" in page  # deltas
    assert "data:image/png;base64," in page and "real tokens/s" in page and "MFU" in page
    # samples paired by prompt, not by position: p1's row holds b1 then a1
    row = page[page.index("p1 &lt;script&gt;"):]
    assert row.index("b1") < row.index("a1") < row.index("p2")
    assert not list(trained_run.glob("*.tmp"))


def test_report_with_one_line_and_no_eval(tmp_path):
    (tmp_path / METRICS_FILE).write_text(json.dumps({"event": "train", "step": 1, "epoch": 0.5,
                                                      "loss": 2.5, "elapsed_s": 1.0}) + "\n")
    paths = write_report(tmp_path, {"model": r"m $\frac$"})  # not parsed as mathtext
    page = paths["report"].read_text()
    assert "2.5 (one logged value)" in page and paths["loss_curve"].stat().st_size > 0
    assert "Evaluation" not in page and "Sample generations" not in page
    # nothing logged at all, and a torn last line after a crash: still a report
    empty = tmp_path / "empty"
    assert write_report(empty, {})["report"].exists()
    (tmp_path / METRICS_FILE).write_text('{"event": "train", "step": 1, "loss": 2.0}\n{"event": "tr')
    assert len(read_metrics(tmp_path)) == 1


def test_callback_writes_only_on_rank_zero(tmp_path):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    state = TrainerState(is_world_process_zero=False)
    cb = RunReportCallback(tmp_path)
    cb.on_train_begin(args, state, TrainerControl())
    cb.on_log(args, state, TrainerControl(), logs={"loss": 1.0})
    assert not (tmp_path / METRICS_FILE).exists()


def test_flops_per_token(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    cfg = model.config
    embed = cfg.vocab_size * cfg.hidden_size
    n = sum(p.numel() for p in model.parameters()) - embed + embed  # minus lookup, plus tied lm_head
    assert estimate_flops_per_token(model) == 6 * n  # everything trainable: full fine-tuning
    assert estimate_flops_per_token(model, full=False) == 4 * n
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    attn = 12 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim * 100
    assert estimate_flops_per_token(model, full=True, seq_len=100) == 6 * n + attn

    lora = _lora_model(tiny_llama_dir)
    trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    n_lora = n + trainable
    assert estimate_flops_per_token(lora) == 4 * n_lora + 2 * trainable
    assert attention_seq_len([10, 30]) == (100 + 900) / 40


def test_matmul_peak_probe_agrees_with_a_stopwatch():
    """The probe's FLOP/s against a second, plain measurement of the same matmul: the best of
    a few timed runs of 2 n^3 FLOPs. A probe that miscounted (n^2, one multiply per pair) or
    timed nothing would be off by far more than the factor allowed for machine noise."""
    import time

    n = 512
    probe = measure_matmul_peak(seconds=0.5, sizes=(n,))
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)  # warm-up
    best = min(_timed(lambda: torch.matmul(a, b), time.perf_counter) for _ in range(5))
    stopwatch = 2 * n ** 3 / best
    assert 0.4 < probe / stopwatch < 2.5, (probe, stopwatch)


def _timed(call, clock) -> float:
    start = clock()
    call()
    return clock() - start


def test_useful_flops_count_the_head_where_it_runs(tiny_llama_dir):
    """The one MFU definition: the output layer is counted at every real token for the
    Trainer's own loss, at labelled positions only for the labelled-only loss, padding never.
    Expected values from the model's own parameter shapes, counted here by hand."""
    from finetuning_suite.train.meter import flop_shape, useful_flops

    lora = _lora_model(tiny_llama_dir)
    cfg = lora.config
    head = cfg.vocab_size * cfg.hidden_size  # tied to the embedding: still a matmul per token
    shape = flop_shape(lora)
    assert shape.head_per_token == 4 * head  # frozen: forward + activation gradient
    tokens, labelled, sum_sq = 100, 30, 2600
    attn = 12 * cfg.num_hidden_layers * cfg.num_attention_heads * (cfg.hidden_size // cfg.num_attention_heads) * sum_sq
    everywhere = useful_flops(shape, tokens=tokens, labelled=labelled, sum_sq=sum_sq, head_everywhere=True)
    labelled_only = useful_flops(shape, tokens=tokens, labelled=labelled, sum_sq=sum_sq, head_everywhere=False)
    assert everywhere - labelled_only == (tokens - labelled) * 4 * head
    assert labelled_only == tokens * shape.body_per_token + labelled * 4 * head + attn
