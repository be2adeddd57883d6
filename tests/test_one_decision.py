"""Each decision made once (issue 16): what was given, how numbers are read, one validation for
every entry point, one chat format handed to every part, and the facade's plug-in protocols.
Expected values are written here by hand or come from another path (the CLI against the API,
the page against FineTuner), never from the code under test itself."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from finetuning_suite import ConfigError, DefaultTrainerConfig, FineTuner
from finetuning_suite.cli.main import parse_command_line
from finetuning_suite.config import FinetuneConfig, load_yaml
from finetuning_suite.web import form

ROOT = Path(__file__).resolve().parent.parent
PAIRS = [{"prompt": f"Say {w}", "completion": w} for w in ["red", "green", "blue", "cyan"] * 3]


def _write(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def saved_run(tiny_llama, tmp_path_factory):
    """A run folder trained with max_length 16, do_sample true and full fine-tuning."""
    folder = tmp_path_factory.mktemp("saved")
    data = _write(folder / "pairs.jsonl", PAIRS)
    ft = FineTuner(tiny_llama, device="cpu", dataset_name=data, max_length=16, do_sample=True,
                   method="full", self_replay=False, max_steps=1, save_strategy="no")
    ft.train(folder / "run")
    return folder / "run"


# -- given is given -------------------------------------------------------------------------------
def test_an_explicit_value_equal_to_the_default_wins_over_a_run_folder(saved_run):
    plain = FineTuner(str(saved_run), device="cpu")
    assert (plain.max_length, plain.config.generation.do_sample, plain.config.method.method) == \
        (16, True, "full")  # the folder's own settings
    given = FineTuner(str(saved_run), device="cpu", max_length=1000, do_sample=False)
    assert given.max_length == 1000 and given.config.generation.do_sample is False
    assert given.config.method.method == "full"  # not given: still the folder's


def test_the_command_line_gives_what_it_names_and_nothing_else(saved_run):
    config, _ = parse_command_line("generate", ["--model_id", str(saved_run), "--max_length", "1000",
                                               "--do_sample", "false", "--method", "lora"])
    assert config.given >= {"model_id", "max_length", "do_sample", "method"}
    assert "temperature" not in config.given and "lora_r" not in config.given
    ft = FineTuner.from_config(config, device="cpu")
    assert ft.max_length == 1000 and ft.config.generation.do_sample is False
    assert ft.config.method.method == "lora"


# -- numbers read as numbers --------------------------------------------------------------------
SPELLINGS = [("1e-3", 0.001), ("1e-8", 1e-8), (".5", 0.5), ("1E4", 10000.0), ("-2e-5", -2e-5)]


@pytest.mark.parametrize("text, number", SPELLINGS)
def test_numbers_in_yaml_flags_and_the_page(text, number, tmp_path):
    assert load_yaml(f"x: {text}") == {"x": number}
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(f"learning_rate: {text}\nadam_epsilon: {text}\n")
    from_yaml, _ = parse_command_line("train", ["--config", str(run_yaml)])
    from_flags, _ = parse_command_line("train", ["--learning_rate", text, "--adam_epsilon", text])
    for config in (from_yaml, from_flags):
        assert config.training.learning_rate == number
        assert config.training_extras["adam_epsilon"] == number  # a pass-through TrainingArguments field
    assert form.coerce("learning_rate", text) == number
    assert form.parse_yaml(f"learning_rate: {text}\nadam_epsilon: {text}\n") == \
        {"learning_rate": number, "adam_epsilon": number}


def test_a_tiny_epsilon_from_a_flag_reaches_the_optimizer(tiny_llama, tmp_path):
    """`--adam_epsilon 1e-8` used to stay the string '1e-8' and end in an optimizer traceback."""
    data = _write(tmp_path / "pairs.jsonl", PAIRS)
    config, _ = parse_command_line("train", ["--model_id", tiny_llama, "--device", "cpu",
                                             "--dataset_name", data, "--adam_epsilon", "1e-8",
                                             "--max_steps", "1", "--self_replay", "false",
                                             "--save_strategy", "no", "--output_dir", str(tmp_path / "run")])
    FineTuner.from_config(config).train()
    record = json.loads((tmp_path / "run" / "finetuner_config.json").read_text())
    assert record["training"]["adam_epsilon"] == 1e-8


# -- one validation, one message ------------------------------------------------------------------
BAD = [("lora_r", 0, "0", "lora_r=0: must be the adapter rank, e.g. 16."),
       ("learning_rate", "fast", "fast", "learning_rate='fast': must be a positive number, e.g. 2e-4."),
       ("method", "lorax", "lorax", "method='lorax': must be one of 'lora', 'qlora', 'full'."),
       ("dtype", "float17", "float17", "dtype='float17': is not a dtype"),
       ("device", "cpu:7", "cpu:7", "device='cpu:7': is not a device this package runs on"),
       ("lora_dropout", 1.5, "1.5", "lora_dropout=1.5: must be a dropout probability in [0, 1)")]


@pytest.fixture(scope="module")
def cli_messages(tmp_path_factory) -> list[str]:
    """stderr of `finetune train --print_config` given every bad value as flags, then as YAML."""
    run_yaml = tmp_path_factory.mktemp("bad") / "run.yaml"
    run_yaml.write_text("".join(f"{name}: {text}\n" for name, _, text, _ in BAD))
    flags = [arg for name, _, text, _ in BAD for arg in (f"--{name}", text)]
    results = [subprocess.run([sys.executable, "-m", "finetuning_suite", "train", "--print_config", *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, HF_HUB_OFFLINE="1"))
               for args in (flags, ["--config", str(run_yaml)])]
    for result in results:
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert f"{len(BAD)} invalid arguments" in result.stderr  # all of them, in one error
    return [r.stderr for r in results]


@pytest.mark.parametrize("name, value, text, message", BAD, ids=[b[0] for b in BAD])
def test_one_bad_value_gets_one_message_everywhere(name, value, text, message, tiny_llama, cli_messages):
    with pytest.raises(ConfigError) as api:
        FineTuner(tiny_llama, **{name: value})
    with pytest.raises(ConfigError) as page:
        form.build_config(form.merge(FinetuneConfig().to_flat(), {name: text}))
    assert message in str(api.value) and message in str(page.value)
    for stderr in cli_messages:  # flags, then YAML
        assert message in stderr


def test_the_pages_start_refuses_what_finetuner_refuses(tiny_llama, tmp_path):
    """Keys and layer names checked only once a model is known: the page checks them against
    the model's config (no weights) with FineTuner's own message."""
    from finetuning_suite.web.preview import check_model_settings

    data = _write(tmp_path / "pairs.jsonl", PAIRS)
    bad_quant = {"model_id": tiny_llama, "dataset_name": data, "quantize": True,
                 "quantization_config": {"load_in_4bits": True}}
    with pytest.raises(ConfigError) as page:
        form.build_config(form.merge(FinetuneConfig().to_flat(), bad_quant))
    with pytest.raises(ConfigError) as api:
        FineTuner(**bad_quant)
    assert "load_in_4bits" in str(page.value) and "load_in_4bits" in str(api.value)
    for settings, message in (({"lora_target_modules": ["q_proj", "nope"]}, "no layer named ['nope']"),
                              ({"lora_r": 5000}, "lora_r=5000 is larger than the layers")):
        config = form.build_config(form.merge(FinetuneConfig().to_flat(),
                                              {"model_id": tiny_llama, "dataset_name": data, **settings}))
        with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
            check_model_settings(config)
        with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
            FineTuner(tiny_llama, device="cpu", **settings)


# -- one chat format ------------------------------------------------------------------------------
def test_preprocessing_changes_nothing_the_model_answers_with(tiny_gpt2, tmp_path):
    """A tokenizer without a chat template, chat data: preprocessing decides the training chat
    format (the plain 'role: content' one) without touching the tokenizer, so generate()
    answers the same before and after it; training makes it the model's format, and the run
    folder saves it."""
    chats = [{"messages": [{"role": "user", "content": f"Say {w}"}, {"role": "assistant", "content": w}]}
             for w in ["red", "green", "blue"] * 4]
    ft = FineTuner(tiny_gpt2, device="cpu", dataset_name=_write(tmp_path / "chat.jsonl", chats),
                   max_length=6, max_steps=2, self_replay=False, save_strategy="no")
    before = ft.generate("Say red")
    ft.preprocess_data()
    assert ft.tokenizer.chat_template is None and ft.generate("Say red") == before
    assert ft.prepared.chat_format.fallback and not ft.chat_format.chat
    ft.train(tmp_path / "run")
    assert ft.chat_format.fallback and ft.tokenizer.chat_template is None  # still not changed
    text, templated = ft.chat_format.prompt_text("Say red", ft.tokenizer)
    assert templated and text == "user: Say red\nassistant:"
    reloaded = FineTuner(str(tmp_path / "run"), device="cpu")
    assert reloaded.tokenizer.chat_template == ft.chat_format.template
    assert reloaded.generate("Say red") == ft.generate("Say red")


class OnlyGenerate:
    """The spec's InferenceHandler protocol, nothing more."""

    def __init__(self):
        self.calls = 0

    def generate(self, prompt_text, model, tokenizer, device, max_length):
        self.calls += 1
        return "fixed"


def test_a_handler_with_only_generate_trains_with_self_replay(tiny_llama, tmp_path):
    handler = OnlyGenerate()
    ft = FineTuner(tiny_llama, device="cpu", dataset_name=_write(tmp_path / "p.jsonl", PAIRS),
                   inference_handler=handler, max_steps=1, save_strategy="no", eval_before=True)
    metrics = ft.train(tmp_path / "run")
    assert metrics["after"]["samples"][0]["generated"] == "fixed"  # evaluation used the handler
    assert ft("Say red") == "fixed"


# -- the facade's protocols and state ------------------------------------------------------------
class NoDefaults(DefaultTrainerConfig):
    def training_arguments(self, *, output_dir, num_train_epochs, encoder_decoder, device):
        return super().training_arguments(output_dir=output_dir, num_train_epochs=num_train_epochs,
                                          encoder_decoder=encoder_decoder, device=device)


class Recording(DefaultTrainerConfig):
    seen: dict | None = None

    def training_arguments(self, *, defaults=None, **kwargs):
        Recording.seen = defaults
        return super().training_arguments(defaults=defaults, **kwargs)


def test_a_trainer_config_is_handed_the_chosen_defaults(tiny_llama, tmp_path):
    with pytest.raises(ConfigError, match="takes no `defaults` keyword"):
        FineTuner(tiny_llama, trainer_config=NoDefaults())
    ft = FineTuner(tiny_llama, device="cpu", dataset_name=_write(tmp_path / "p.jsonl", PAIRS),
                   trainer_config=Recording(max_steps=1, save_strategy="no"), self_replay=False)
    ft.train(tmp_path / "run")
    assert Recording.seen["learning_rate"] == 1e-3 and Recording.seen["per_device_train_batch_size"] == 4


def test_a_new_dataset_name_is_prepared_again(tiny_llama, tmp_path):
    first = _write(tmp_path / "a.jsonl", PAIRS)
    second = _write(tmp_path / "b.jsonl", PAIRS[:4])
    ft = FineTuner(tiny_llama, device="cpu", dataset_name=first, max_steps=1, save_strategy="no",
                   self_replay=False)
    ft.train(tmp_path / "one")
    assert len(ft.tokenized_dataset) == 12
    ft.dataset_name = second
    ft.train(tmp_path / "two")
    record = json.loads((tmp_path / "two" / "finetuner_config.json").read_text())
    assert record["data"]["dataset"] == second and record["data"]["stats"]["train"]["examples"] == 4


@pytest.mark.parametrize("rows, kind", [(12, "training_rows"), (40, "held_out")])
def test_a_single_file_gets_an_evaluation_split_and_says_which(tiny_llama, tmp_path, rows, kind):
    data = _write(tmp_path / "own.jsonl", [{"prompt": f"Code {i}?", "completion": f"C{i}"} for i in range(rows)])
    ft = FineTuner(tiny_llama, device="cpu", dataset_name=data, max_length=4, max_steps=1,
                   save_strategy="no", self_replay=False)
    metrics = ft.train(tmp_path / "run", eval_before=True)
    assert metrics["before"]["eval_split"] == metrics["after"]["eval_split"] == kind
    result = ft.evaluate()
    assert result["eval_split"] == kind
    assert result["n"] == (rows if kind == "training_rows" else 4)  # 10% of 40 held out
    assert len(ft.tokenized_dataset) == (rows if kind == "training_rows" else 36)


def test_the_interrupted_message_names_the_newest_checkpoint(tmp_path):
    from finetuning_suite.cli.main import interrupted_message

    for step in (9, 10, 2):
        (tmp_path / f"checkpoint-{step}").mkdir()
    assert f"{tmp_path / 'checkpoint-10'}" in interrupted_message(str(tmp_path))
    assert "no checkpoint was saved yet" in interrupted_message(str(tmp_path / "nothing"))


# -- self-replay end to end ---------------------------------------------------------------------
def test_self_replay_end_to_end_on_a_tiny_chat_model(tiny_llama, tmp_path):
    """A tiny chat model first taught to answer the replay prompts with "okay." then trained on
    new data with self-replay: the replay rows are its own answers, tokenized through its chat
    template, and they join the training rows."""
    from finetuning_suite.data.replay import REPLAY_PROMPTS

    teach = [{"prompt": p, "completion": "okay."} for p in REPLAY_PROMPTS[:32]]
    FineTuner(tiny_llama, device="cpu", dataset_name=teach, self_replay=False, method="full",
              learning_rate=1e-2, num_train_epochs=10, save_strategy="no", eval_fraction=0
              ).train(tmp_path / "taught")
    ft = FineTuner(str(tmp_path / "taught"), device="cpu", method="lora",
                   dataset_name=_write(tmp_path / "p.jsonl", PAIRS), max_steps=2, save_strategy="no")
    assert ft.generate(REPLAY_PROMPTS[0], 8) == "okay."
    ft.train(tmp_path / "run")
    added = ft.data_stats["self_replay_rows"]
    assert added >= 16  # replay_count(12 rows) = 16, every answer finished with EOS
    record = json.loads((tmp_path / "run" / "finetuner_config.json").read_text())
    assert record["data"]["stats"]["self_replay_rows"] == added
