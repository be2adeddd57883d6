"""From `FineTuner(...)`'s arguments to one validated `FinetuneConfig`.

Which arguments a call *gave* is recorded by name (`records_given`), never guessed from values:
`FineTuner("runs/x", max_length=1000)` gives max_length even though 1000 is its default. The
merge, in rising precedence: the configuration's defaults; the settings saved in a trained run
folder passed as `model_id` (so it reloads as it was trained); everything given (keyword
arguments, a `DefaultTrainerConfig`'s fields). The spec's `["q", "v"]` / `SEQ_2_SEQ_LM`
defaults, when not given, mean "the model's own choice". The result goes through the one
validation (`config.checks`) plus this machine's checks; every problem is collected into one
`ConfigError`.
"""
from __future__ import annotations

import functools
import inspect
import os
import typing

from .config import FinetuneConfig, check_machine, coerce_to, option_fields, problems_of
from .config.values import unwrap_optional
from .errors import ConfigError, FineTuningError, Problems
from .model.loading import saved_settings
from .train.trainer_config import DefaultTrainerConfig

# Settings a trained run folder carries over when it is loaded again (so it generates and
# trains on as it was trained); anything given explicitly wins.
INHERITED = ("method", "quantize", "quantization_config", "dtype", "max_length", "format",
             "column_map", "max_seq_length", "train_on_inputs", "use_chat_template", "do_sample",
             "temperature", "top_p", "top_k", "repetition_penalty", "num_beams", "system_prompt",
             "stage")
PLUGINS = (("preprocessor", "__call__", "DefaultPreprocessor()"),
           ("trainer_config", "build_trainer", "DefaultTrainerConfig()"),
           ("inference_handler", "generate", "DefaultInferenceHandler()"))
GENERATION_SETTINGS = ("do_sample", "temperature", "top_p", "top_k", "repetition_penalty",
                       "num_beams", "use_chat_template", "system_prompt")


def records_given(init):
    """Wrap `__init__` so that the arguments a call passed, by name (keyword or positional,
    `**options` included), are in `self._given` when the body runs; the signature is kept."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        given = {k: v for k, v in bound.arguments.items() if k not in ("self", "options")}
        given.update(bound.arguments.get("options", {}))
        self._given = given
        return init(self, *args, **kwargs)

    return wrapper


def generation_settings(cfg: FinetuneConfig) -> dict:
    return {name: cfg.get(name) for name in GENERATION_SETTINGS}


def _check_plugins(problems: Problems, objects: dict) -> None:
    for name, method, example in PLUGINS:
        value = objects.get(name)
        if value is None:
            continue
        if isinstance(value, type):
            problems.add(name, value, f"is a class; pass an instance, e.g. {name}={example}.")
        elif not callable(getattr(value, method, None)):
            problems.add(name, value, f"has no {method}() method; pass an object like {example}.")
    trainer_config = objects.get("trainer_config")
    call = getattr(trainer_config, "training_arguments", None)
    stage = objects.get("stage", "sft")
    if trainer_config is not None and stage not in (None, "sft") and \
            getattr(trainer_config, "stage", "sft") != stage:
        problems.add("trainer_config", trainer_config, f"does not train stage={stage!r}: pass "
                     f"DefaultTrainerConfig(stage={stage!r}, ...) or leave trainer_config out.")
    if trainer_config is not None and not isinstance(trainer_config, type) and callable(call):
        params = inspect.signature(call).parameters
        if "defaults" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            problems.add("trainer_config", trainer_config, "its training_arguments() takes no "
                         "`defaults` keyword, which the TrainerConfig protocol declares (the "
                         "settings chosen from the data); add `defaults=None` to its signature.")


def build_config(given: dict) -> FinetuneConfig:
    """The validated FinetuneConfig for the arguments a `FineTuner(...)` call gave (by name).
    Plug-in objects are left in `given`; every problem is raised in one ConfigError."""
    problems = Problems("FineTuner")
    flat = {k: v for k, v in given.items() if k not in dict.fromkeys(n for n, _, _ in PLUGINS)}
    _check_plugins(problems, {**given, "stage": given.get("stage", "sft")})
    model_id = flat.get("model_id")
    if model_id is not None and not isinstance(model_id, (str, os.PathLike)):
        problems.add("model_id", model_id, "must be a hub id, a local folder or .gguf path, or None "
                     "for the embedded model.")
        model_id = None
    try:
        saved = saved_settings(model_id)
    except FineTuningError as exc:
        problems.items.append(str(exc))
        saved = {}
    named = dict(flat)
    if "lora_task_type" in named:  # a TaskType member, as its name
        named["lora_task_type"] = getattr(named["lora_task_type"], "value", named["lora_task_type"])
    for name, value in list(named.items()):  # a list option given as a tuple or one string of names
        if isinstance(value, (str, tuple)) and name in option_fields() and \
                typing.get_origin(unwrap_optional(option_fields()[name][1])[0]) is list:
            named[name] = coerce_to(option_fields()[name][1], value)
    trainer_config = given.get("trainer_config")
    if isinstance(trainer_config, DefaultTrainerConfig):
        for name in sorted(k for k in trainer_config.training_args
                           if k in named and named[k] != trainer_config.training_args[k]):
            problems.add(name, named[name], f"differs from trainer_config's {name}="
                         f"{trainer_config.training_args[name]!r}; give it in one place.")
        named.update(trainer_config.training_args)
    merged = {k: v for k, v in saved.items() if k in INHERITED and k not in named}
    merged.update(named)
    if merged.get("quantize") is True and merged.get("method", "lora") == "lora":
        merged["method"] = "qlora"
    try:
        config = FinetuneConfig.from_flat(merged, where="FineTuner", given=named)
    except ConfigError as exc:
        problems.items.append(str(exc))
        problems.raise_if_any()
    problems.items.extend(problems_of(config).items)
    check_machine(config, problems)
    problems.raise_if_any()
    return config
