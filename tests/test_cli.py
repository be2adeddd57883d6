"""The `finetune` command through a real subprocess: exit codes, files written, `--config` and
flag precedence, `--print_config` round trip, and `chat` driven through stdin."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from finetuning_suite.cli.main import parse_command_line

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def finetune(*args, stdin: str | None = None, cwd=None, timeout=300):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", "finetuning_suite", *map(str, args)], input=stdin,
                          capture_output=True, text=True, env=env, cwd=cwd or ROOT, timeout=timeout)


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_every_recipe_parses_and_validates(recipe):
    header = [line for line in recipe.read_text().splitlines() if line.startswith("#")]
    assert any("finetune train --config recipes/" + recipe.name in line for line in header), \
        "a recipe's header comment gives its launch command"
    config, _ = parse_command_line("train", ["--config", str(recipe)])
    config.validate()
    assert config.training.output_dir.startswith("runs/")


def test_print_config_round_trips_and_flags_override_the_file(tmp_path):
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text("dataset_name: iso_dates\nlora_r: 4\nlearning_rate: 0.001\n"
                        "lr_scheduler_type: cosine\nadam_beta2: 0.98\n")
    first = finetune("train", "--config", run_yaml, "--lora_r", "8", "--print_config")
    assert first.returncode == 0, first.stderr
    printed = yaml.safe_load(first.stdout)
    assert printed["lora_r"] == 8  # the flag beats the file
    assert printed["learning_rate"] == 0.001 and printed["dataset_name"] == "iso_dates"
    assert printed["adam_beta2"] == 0.98  # any TrainingArguments field passes through
    again = tmp_path / "again.yaml"
    again.write_text(first.stdout)
    second = finetune("train", "--config", again, "--print_config")
    assert second.returncode == 0, second.stderr
    assert yaml.safe_load(second.stdout) == printed


@pytest.mark.parametrize("args, message", [
    (["trian"], "unknown command 'trian' (did you mean 'train'?)"),
    (["train", "--lora_rr", "3"], "unknown option '--lora_rr' (did you mean 'lora_r'?)"),
    (["train", "--lora_r", "abc"], "lora_r='abc': must be the adapter rank, e.g. 16."),
    (["train", "--config", "missing.yaml"], "no such file"),
    (["train", "--learning_rate", "nan", "--print_config"], "learning_rate=nan: must be a finite number"),
    (["train", "--method", "fast"], "method='fast': must be one of 'lora', 'qlora', 'full'."),
])
def test_bad_input_is_one_message_and_exit_2(args, message):
    result = finetune(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["train", "eval", "generate", "chat", "export", "serve", "web", "demo"])
def test_help_on_every_subcommand(command):
    """The first thing many users type (it used to crash on a '%' in a help text)."""
    result = finetune(command, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage: ") and "Traceback" not in result.stderr
    if command != "demo":
        assert "--lora_r" in result.stdout and "default: 16" in result.stdout
        assert "{lora,qlora,full}" in result.stdout  # a choice shows its values


def test_broken_yaml_names_its_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset_name: iso_dates\nlora_r: [8\nlearning_rate: 1e-3\n")
    result = finetune("train", "--config", bad)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "line 3" in result.stderr or "line 2" in result.stderr


def test_unknown_yaml_key_is_refused_with_a_suggestion(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset_nmae: iso_dates\n")
    result = finetune("train", "--config", bad)
    assert result.returncode == 2 and "did you mean 'dataset_name'?" in result.stderr


def test_train_writes_the_run_and_the_report_then_generate_and_chat_use_it(tiny_llama, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"Say {w}", "completion": w})
                              for w in ["red", "green", "blue", "cyan"] * 4) + "\n")
    out = tmp_path / "run"
    result = finetune("train", "--model_id", tiny_llama, "--device", "cpu", "--dataset_name", data,
                      "--output_dir", out, "--num_train_epochs", "2", "--per_device_train_batch_size", "4",
                      "--learning_rate", "0.005", "--logging_steps", "1", "--max_length", "4",
                      "--disable_tqdm", "true")
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("adapter_model.safetensors", "config.yaml", "finetuner_config.json", "metrics.jsonl",
                 "loss_curve.png", "report.html"):
        assert (out / name).is_file(), name
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["learning_rate"] == 0.005 and saved["num_train_epochs"] == 2
    assert saved["max_length"] == 4 and saved["disable_tqdm"] is True

    again = finetune("train", "--config", out / "config.yaml", "--output_dir", tmp_path / "again")
    assert again.returncode == 0, again.stderr[-3000:]
    first_run = json.loads((out / "finetuner_config.json").read_text())["metrics"]
    second_run = json.loads((tmp_path / "again" / "finetuner_config.json").read_text())["metrics"]
    assert second_run["train_loss"] == pytest.approx(first_run["train_loss"], rel=1e-4)  # same run

    # the same folder again: refused (runs never mix); --resume continues from its last checkpoint
    refused = finetune("train", "--config", out / "config.yaml")
    assert refused.returncode == 2 and "already holds a run" in refused.stderr
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-6", "checkpoint-8"]
    more = finetune("train", "--config", out / "config.yaml", "--resume", "--num_train_epochs", "3")
    assert more.returncode == 0, more.stderr[-3000:]
    steps = [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
             if "loss" in r]
    assert steps == list(range(1, 13))  # 8 steps, then 9-12 resumed from checkpoint-8

    scored = finetune("eval", "--model_id", out, "--device", "cpu", "--dataset_name", data,
                      "--limit", "4", "--output_file", tmp_path / "eval.json")
    assert scored.returncode == 0, scored.stderr[-2000:]
    printed, written = json.loads(scored.stdout), json.loads((tmp_path / "eval.json").read_text())
    assert printed["n"] == written["n"] == 4 and printed["eval_split"] == "dataset argument"
    assert len(written["samples"]) == 4 and 0 <= printed["exact_match"] <= 1 and printed["loss"] > 0

    gen = finetune("generate", "--model_id", out, "--device", "cpu", "--prompt", "Say red", "Say blue")
    assert gen.returncode == 0, gen.stderr[-2000:]
    assert gen.stdout.count("### ") == 2

    chat = finetune("chat", "--model_id", out, "--device", "cpu", stdin="Say red\n/reset\nSay blue\n/exit\n")
    assert chat.returncode == 0, chat.stderr[-2000:]
    assert chat.stdout.count("assistant> ") == 2 and "(conversation cleared)" in chat.stdout
