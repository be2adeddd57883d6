"""The estimate before a run (`train/estimate.py`) and the machine cache (`train/machine.py`):
memory parts counted by hand, the activation counter, the warning and its fixes, the estimate in
the log and the run record, `finetune train --dry_run` writing nothing, probes read back from
disk instead of measured again."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from finetuning_suite import FineTuner
from finetuning_suite.train import estimate, machine, meter

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(device="cpu", lora_r=4, self_replay=False, retention_probe=False)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A machine cache of the test's own; the in-process peak cache emptied before and after."""
    monkeypatch.setenv("FINETUNING_SUITE_CACHE", str(tmp_path / "cache"))
    meter._cached_peak.cache_clear()
    yield tmp_path / "cache" / machine.CACHE_FILE
    meter._cached_peak.cache_clear()


def built(ft, tmp_path, **training):
    """The run's training arguments and trainer, as `FineTuner.train` builds them."""
    from finetuning_suite.data.chat_template import tokenizer_with_template

    prepared = ft._prepared_for_now()
    ft._choose_defaults(prepared, None)
    for name, value in training.items():
        ft.trainer_config.training_args[name] = value
    args = ft._training_arguments(str(tmp_path / "out"), None, prepared)
    trainer = ft.trainer_config.build_trainer(
        model=ft.model, args=args, tokenizer=tokenizer_with_template(ft.tokenizer, prepared.chat_format),
        train_dataset=prepared.train, eval_dataset=None, encoder_decoder=False)
    return args, trainer


def by_hand(config, lora_r: int) -> dict:
    """Parameter counts of the tiny Llama from its config (tied embeddings, all-linear LoRA)."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    linears = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]  # q k v o gate up down
    base = layers * (sum(a * b for a, b in linears) + 2 * h) + h + config.vocab_size * h
    lora = layers * sum(lora_r * (a + b) for a, b in linears)
    return {"base": base, "lora": lora}


def test_memory_parts_by_hand(tiny_llama, tmp_path, cache):
    ft = FineTuner(tiny_llama, dataset_name="facts", **SMALL)
    counts = by_hand(ft.model.config, 4)
    buffers = sum(b.numel() * b.element_size() for b in ft.model.buffers())
    args, trainer = built(ft, tmp_path)
    est = estimate.estimate_run(ft.model, args, trainer.train_dataset, trainer=trainer, method="lora")
    m = est.memory
    assert m.weights == counts["base"] * 4 + buffers
    assert m.adapter == m.gradients == counts["lora"] * 4
    assert m.optimizer == 2 * counts["lora"] * 4  # AdamW: 2 fp32 states per trainable parameter
    assert m.activations > 0 and m.activations_other is not None and m.activations_other < m.activations
    assert m.total() == m.weights + m.adapter + m.gradients + m.optimizer + m.activations + m.runtime
    assert m.gradients <= m.at_once <= m.activations + m.gradients
    assert est.time.source == "calibrated" and est.time.seconds_per_step > 0
    assert est.time.steps == estimate.train_steps(args, len(trainer.train_dataset))
    text = est.text()
    for part in ("weights", "adapter", "gradients", "optimizer", "activations", "with it"):
        assert part in text

    full = FineTuner(tiny_llama, dataset_name="facts", method="full", **SMALL)
    args, trainer = built(full, tmp_path)
    parts = estimate.parameter_bytes(full.model, "full")
    assert parts == {"weights": counts["base"] * 4 + buffers, "adapter": 0, "gradients": counts["base"] * 4}
    assert estimate.optimizer_state_bytes(full.model, args.optim)[0] == 2 * counts["base"] * 4


def test_live_storage_counts_what_is_alive():
    with estimate.LiveStorage(multiples=(1, 3)) as live:
        a = torch.ones(1000)                      # 4000 bytes
        b = torch.ones(500, dtype=torch.float64)  # 4000 bytes
        view = a[:10]                             # the same storage: not counted again
        del b
        c = torch.ones(250)                       # 1000 bytes
    assert live.peak == 8000 and live.live == 5000
    assert live.peaks[3] == 24000
    del a, view, c
    assert live.live == 0


def test_estimate_leaves_the_model_and_rngs_as_they_were(tiny_llama, tmp_path, cache):
    ft = FineTuner(tiny_llama, dataset_name="facts", lora_dropout=0.1, **SMALL)
    args, trainer = built(ft, tmp_path, gradient_checkpointing=True)
    ft.model.eval()
    rng = torch.get_rng_state()
    est = estimate.estimate_run(ft.model, args, trainer.train_dataset, trainer=trainer)
    assert torch.equal(torch.get_rng_state(), rng)
    assert not ft.model.training and all(p.grad is None for p in ft.model.parameters())
    assert est.memory.gradient_checkpointing and est.memory.activations < est.memory.activations_other


def test_warning_with_fixes_in_the_log_and_the_estimate_in_the_record(tiny_llama, tmp_path, cache,
                                                                       monkeypatch, caplog):
    monkeypatch.setattr(machine, "memory_available", lambda device="cpu": 1 << 20)  # 1 MiB
    ft = FineTuner(tiny_llama, dataset_name="facts", num_train_epochs=1, save_strategy="no", **SMALL)
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="finetuning_suite"):
        ft.train(str(out))
    logged = [r.getMessage() for r in caplog.records if r.name == "finetuning_suite.train.estimate"]
    assert any(line.startswith("Estimate: peak memory") for line in logged)
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                   and "expected to need" in r.getMessage())
    for fix in ("per_device_train_batch_size=", "gradient_checkpointing=True", 'method="qlora"'):
        assert fix in warning
    record = json.loads((out / "finetuner_config.json").read_text())["estimate"]
    assert record["warning"] and record["memory"]["available"] == 1 << 20
    steps = [r["step"] for r in meter.read_metrics(out) if r["event"] == "summary"]
    assert record["time"]["steps"] == steps[-1]  # the Trainer's own count


def test_dry_run_prints_the_estimate_and_writes_nothing(tiny_llama, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               FINETUNING_SUITE_CACHE=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-m", "finetuning_suite", "train", "--model_id", tiny_llama,
                           "--dataset_name", "facts", "--output_dir", str(out), "--retention_probe", "false",
                           "--dry_run"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Estimate for this run: lora on cpu" in done.stdout
    assert "peak memory" in done.stdout and "steps x" in done.stdout
    assert "self-replay rows stood in" in done.stdout
    assert not out.exists()
    assert (tmp_path / "cache" / machine.CACHE_FILE).is_file()


def test_probes_are_read_back_from_disk(tiny_llama, tmp_path, cache, monkeypatch):
    probes = []
    monkeypatch.setattr(meter, "measure_matmul_peak", lambda **kw: probes.append(kw) or 1e10)
    assert meter._cached_peak(torch.float32, "cpu") == 1e10
    meter._cached_peak.cache_clear()  # as in a new process
    assert meter._cached_peak(torch.float32, "cpu") == 1e10
    assert len(probes) == 1
    saved = json.loads(cache.read_text())
    (entry,) = saved["machines"].values()
    assert entry["machine"]["threads"] == torch.get_num_threads()
    assert entry["probes"]["matmul_peak/float32"] == 1e10

    calibrations = []
    real = estimate._calibrate
    monkeypatch.setattr(estimate, "_calibrate", lambda *a, **k: calibrations.append(1) or real(*a, **k))
    ft = FineTuner(tiny_llama, dataset_name="facts", **SMALL)
    args, trainer = built(ft, tmp_path)
    first = estimate.estimate_run(ft.model, args, trainer.train_dataset, trainer=trainer)
    probed = len(probes)  # the peak of the precision the run computes in, if not float32
    second = estimate.estimate_run(ft.model, args, trainer.train_dataset, trainer=trainer)
    assert len(calibrations) == 1 and len(probes) == probed
    assert sum(p["dtype"] == torch.float32 for p in probes) == 1  # read back, not measured again
    assert second.memory.activations == first.memory.activations
    assert second.time.seconds_per_step == pytest.approx(first.time.seconds_per_step)
    assert any("machine cache" in note for note in second.notes)


def test_memory_available_reads_the_machine():
    free = machine.memory_available("cpu")
    assert machine.process_rss() < free <= machine.process_rss() + (machine._meminfo().get("MemTotal") or free)


def test_estimate_without_a_trainer(tiny_gpt2, tmp_path, cache):
    """Any model and tokenized rows: the model's own loss, rows padded here."""
    ft = FineTuner(tiny_gpt2, dataset_name="facts", **SMALL)
    args, trainer = built(ft, tmp_path)
    est = estimate.estimate_run(ft.model, args, ft.prepared.train, method="lora")
    assert est.memory.activations > 0 and est.time.source == "calibrated"
    assert est.memory.activations_other < est.memory.activations  # GPT-2's blocks found


def test_the_cache_keeps_the_newest_entries_of_a_kind(cache, monkeypatch):
    monkeypatch.setattr(machine, "KEEP_PER_KIND", 3)
    machine.store_value("matmul_peak/float32", "cpu", 1.0)
    for i in range(5):
        machine.store_value(f"calibration/{i}", "cpu", {"i": i})
    (entry,) = json.loads(cache.read_text())["machines"].values()
    assert list(entry["probes"]) == ["matmul_peak/float32", "calibration/2", "calibration/3", "calibration/4"]
