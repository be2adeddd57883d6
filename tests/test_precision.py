"""Precision chosen automatically (`train/precision.py`): explicit values win, a CPU without native
bf16 trains in fp32 without timing anything, one with it trains in bf16 only when the timed
matmul says bf16 is faster, the probe runs once per machine, and the choice reaches the
TrainingArguments, the log and the run record."""
import json
import logging
import math

import pytest

from finetuning_suite import DefaultTrainerConfig, FineTuner
from finetuning_suite.cli.main import parse_command_line
from finetuning_suite.train import machine, precision
from conftest import fast_trainer


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUNING_SUITE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def never_timed():
    raise AssertionError("the bf16 matmul was timed")


@pytest.mark.parametrize("given, expected", [
    ({"bf16": False}, (False, False)), ({"bf16": True}, (True, False)),
    ({"fp16": True}, (False, True)), ({"bf16": False, "fp16": False}, (False, False)),
])
def test_an_explicit_value_wins_and_nothing_is_probed(given, expected, monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_speedup", never_timed)
    chosen = precision.choose("cpu", **given)
    assert (chosen.bf16, chosen.fp16) == expected and chosen.chosen == "given"


def test_a_cpu_without_native_bf16_trains_in_fp32_untimed(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "fma"}))
    monkeypatch.setattr(precision, "cpu_bf16_speedup", never_timed)
    for auto in (None, "auto", "AUTO"):
        chosen = precision.choose("cpu", bf16=auto, fp16=auto)
        assert not chosen.bf16 and not chosen.fp16 and chosen.chosen == "auto"
        assert "no native bf16" in chosen.line()


@pytest.mark.parametrize("speedup, bf16", [(1.05, False), (3.5, True)])
def test_native_bf16_is_used_only_where_the_probe_finds_it_faster(speedup, bf16, monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512f", "amx_bf16"}))
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: speedup)
    chosen = precision.choose("cpu")
    assert chosen.bf16 is bf16 and not chosen.fp16
    assert f"{speedup}x" in chosen.reason and ("bf16=False" if bf16 else "bf16=True") in chosen.reason


def test_other_devices_default_to_fp32():
    chosen = precision.choose("mps")
    assert not chosen.bf16 and not chosen.fp16


def test_the_probe_is_measured_once_per_machine(cache, monkeypatch):
    calls = []

    def measure():
        calls.append(1)
        return 2.5

    monkeypatch.setattr(precision, "measure_cpu_bf16_speedup", measure)
    assert precision.cpu_bf16_speedup() == 2.5 and precision.cpu_bf16_speedup() == 2.5
    assert len(calls) == 1
    assert machine.cached_value(precision.PROBE_NAME, "cpu") == 2.5
    assert json.loads((cache / machine.CACHE_FILE).read_text())  # on disk, for the next process


def test_the_real_probe_measures_a_ratio():
    speedup = precision.measure_cpu_bf16_speedup()
    assert math.isfinite(speedup) and speedup > 0
    if "amx_bf16" in precision.cpu_flags():  # AMX tiles: bf16 matmuls are several times faster
        assert speedup > precision.CPU_BF16_MIN_SPEEDUP, speedup


@pytest.mark.parametrize("fast", [False, True])
def test_the_choice_reaches_the_training_arguments(fast, monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: 4.0 if fast else 1.0)
    assert DefaultTrainerConfig().training_arguments(device="cpu").bf16 is fast
    assert DefaultTrainerConfig(bf16="auto").training_arguments(device="cpu").bf16 is fast
    # explicit values win over the probe, both ways
    assert DefaultTrainerConfig(bf16=not fast).training_arguments(device="cpu").bf16 is (not fast)


def test_yaml_and_flags_take_auto(tmp_path):
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text("dataset_name: iso_dates\nbf16: auto\n")
    config, _ = parse_command_line("train", ["--config", str(run_yaml)])
    config.validate()
    config, _ = parse_command_line("train", ["--dataset_name", "iso_dates", "--fp16", "auto"])
    config.validate()
    config, _ = parse_command_line("train", ["--dataset_name", "iso_dates", "--bf16", "sometimes"])
    with pytest.raises(Exception, match="bf16='sometimes'"):
        config.validate()


def test_a_run_logs_and_records_its_precision(tiny_llama, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: 4.0)
    rows = [{"prompt": f"Code {i}?", "completion": f" {'ABCD'[i]}"} for i in range(4)]
    ft = FineTuner(tiny_llama, dataset_name=rows, trainer_config=fast_trainer(max_steps=1))
    with caplog.at_level(logging.INFO, logger="finetuning_suite"):
        ft.train(str(tmp_path / "run"))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Precision:")]
    assert lines == ["Precision: bf16 mixed precision (chosen automatically: this CPU has amx_bf16 "
                     "and a bf16 matmul ran 4.0x as fast as fp32 (probed once, cached); pass "
                     "bf16=False for fp32)."]
    run = json.loads((tmp_path / "run" / "finetuner_config.json").read_text())
    assert run["training"]["bf16"] is True
    assert run["precision"]["bf16"] is True and run["precision"]["chosen"] == "auto"
