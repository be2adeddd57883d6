"""From `FineTuner(...)`'s arguments to one validated `FinetuneConfig`.

The spec's arguments (its `["q", "v"]` / `SEQ_2_SEQ_LM` defaults left alone mean "the model's
own choice"), any other config option given by name, the settings saved in a trained run folder
passed as `model_id` (so it reloads as it was trained), and a `DefaultTrainerConfig`'s training
arguments are merged here; every problem is collected into one `ConfigError`.
"""
from __future__ import annotations

import inspect
import os

from .config import FinetuneConfig
from .data.sources import check_source
from .errors import ConfigError, FineTuningError, Problems
from .model.device import parse_dtype, resolve_device
from .model.loading import saved_settings
from .model.lora import SPEC_TARGET_MODULES, SPEC_TASK_TYPE, validate_lora_targets
from .model.quantization import validate_quantization_config
from .train.trainer_config import DefaultTrainerConfig

# Settings a trained run folder carries over when it is loaded again (so it generates and
# trains on as it was trained); the caller's explicit arguments still win.
_INHERITED = ("method", "quantize", "quantization_config", "dtype", "max_length", "format",
              "column_map", "max_seq_length", "train_on_inputs", "use_chat_template", "do_sample",
              "temperature", "top_p", "top_k", "repetition_penalty", "num_beams", "system_prompt")
PLUGINS = (("preprocessor", "__call__", "DefaultPreprocessor()"),
            ("trainer_config", "build_trainer", "DefaultTrainerConfig()"),
            ("inference_handler", "generate", "DefaultInferenceHandler()"))


def generation_settings(cfg: FinetuneConfig) -> dict:
    g = cfg.generation
    return dict(do_sample=g.do_sample, temperature=g.temperature, top_p=g.top_p, top_k=g.top_k,
                repetition_penalty=g.repetition_penalty, num_beams=g.num_beams,
                use_chat_template=cfg.data.use_chat_template, system_prompt=g.system_prompt)


def build_config(given: dict, options: dict, signature_of) -> FinetuneConfig:
    """The validated FinetuneConfig for FineTuner's arguments: the spec's arguments (spec
    defaults left alone mean "the model's own choice"), any other option by name, the settings of
    a trained run folder passed as model_id, and a DefaultTrainerConfig's training arguments.
    Every problem is collected and raised in one ConfigError."""
    problems = Problems("FineTuner")
    objects = {name: given.pop(name) for name, _, _ in PLUGINS}
    for name, method, example in PLUGINS:
        value = objects[name]
        if value is None:
            continue
        if isinstance(value, type):
            problems.add(name, value, f"is a class; pass an instance, e.g. {name}={example}.")
        elif not callable(getattr(value, method, None)):
            problems.add(name, value, f"has no {method}() method; pass an object like {example}.")
    validate_lora_targets(problems, lora_target_modules=given["lora_target_modules"],
                          lora_task_type=given["lora_task_type"])
    model_id = given["model_id"]
    if model_id is not None and not isinstance(model_id, (str, os.PathLike)):
        problems.add("model_id", model_id, "must be a hub id, a local folder or .gguf path, or None "
                     "for the embedded model.")
        model_id = None
    flat: dict = {}
    try:
        saved = saved_settings(model_id)
    except FineTuningError as exc:
        problems.items.append(str(exc))
        saved = {}
    flat.update({k: v for k, v in saved.items() if k in _INHERITED})
    defaults = {name: p.default for name, p in inspect.signature(signature_of).parameters.items()}
    for name, value in given.items():
        if name in flat and _same(value, defaults.get(name)):
            continue  # left at its default: the run folder's setting stands
        flat[name] = value
    flat["lora_target_modules"] = _targets(given["lora_target_modules"])
    task = given["lora_task_type"]
    flat["lora_task_type"] = None if task is SPEC_TASK_TYPE else task
    trainer_config = objects["trainer_config"]
    if isinstance(trainer_config, DefaultTrainerConfig):
        clash = {k for k in trainer_config.training_args if k in options
                 and options[k] != trainer_config.training_args[k]}
        for name in sorted(clash):
            problems.add(name, options[name], f"differs from trainer_config's {name}="
                         f"{trainer_config.training_args[name]!r}; give it in one place.")
        flat.update(trainer_config.training_args)
    if isinstance(options.get("lora_target_modules"), list):
        options["lora_target_modules"] = _targets(options["lora_target_modules"])
    flat.update(options)
    if flat.get("quantize") and flat.get("method", "lora") == "lora":
        flat["method"] = "qlora"
    for issue in validate_quantization_config(flat.get("quantization_config")):
        problems.add("quantization_config", flat.get("quantization_config"), issue)
    issue = check_source(flat.get("dataset_name"))
    if issue:
        problems.add("dataset_name", flat.get("dataset_name"), issue)
    try:
        config = FinetuneConfig.from_flat(flat, where="FineTuner")
    except ConfigError as exc:
        problems.items.append(str(exc))
        problems.raise_if_any()
    try:
        config.validate("FineTuner")
    except ConfigError as exc:
        problems.items.extend(line.strip()[2:] for line in str(exc).splitlines()[1:])
    if config.model.dtype is not None:
        try:
            parse_dtype(config.model.dtype, "dtype")
        except ConfigError as exc:
            problems.items.append(str(exc))
    try:
        resolve_device(config.model.device)
    except FineTuningError as exc:
        problems.items.append(str(exc))
    problems.raise_if_any()
    return config


def _targets(value):
    """None for "the model's own choice"; a one-item ['all-linear'] (from a flag) as the string."""
    if value is SPEC_TARGET_MODULES or value is None:
        return None
    if isinstance(value, (list, tuple)) and len(value) == 1 and value[0] == "all-linear":
        return "all-linear"
    return list(value) if isinstance(value, tuple) else value


def _same(a, b) -> bool:
    try:
        return a is b or (type(a) is type(b) and a == b)
    except Exception:  # noqa: BLE001 - odd objects compare as different
        return False
