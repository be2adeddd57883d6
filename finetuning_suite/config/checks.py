"""Validation: every check of an option's value that needs neither a model nor this machine.

`validate(config, where)` runs them all and raises one `ConfigError` listing every problem
(field, value, fix). `FineTuner(...)`, `finetune <command>`, `--config x.yaml`, `--print_config`
and the web page's Start all call it, so one bad value gets one message wherever it was given.

Checks that need the model (LoRA layer names, the rank against the layers' widths) live with
the model (`model/lora.py`); checks that need this machine (is CUDA here, fp16 on a CPU) in
`check_machine`. Both collect into the same kind of error.
"""
from __future__ import annotations

import math
import os
import typing
from enum import Enum

from ..errors import ConfigError, Problems
from .options import ALL_LINEAR, STAGES, FinetuneConfig, option_fields, pass_through_field
from .values import is_auto_precision, unwrap_optional

# name -> (kind, low, high, hint). Bounds are inclusive unless the name is in _STRICT_MIN /
# _MAX_INCLUSIVE says otherwise.
NUMBER_HINTS = {
    "lora_r": ("int", 1, None, "the adapter rank, e.g. 16"),
    "lora_alpha": ("num", 0, None, "LoRA scale = alpha / r, e.g. 32"),
    "lora_dropout": ("num", 0, 1, "a dropout probability in [0, 1), e.g. 0.05"),
    "max_length": ("int", 1, None, "the most new tokens generate() produces, e.g. 256"),
    "max_seq_length": ("int", 2, None, "an integer >= 2, e.g. 1024"),
    "eval_fraction": ("num", 0, 1, "a fraction between 0 and 1 (0: no eval split), e.g. 0.1"),
    "num_train_epochs": ("num", 0, None, "a positive number, e.g. 3"),
    "per_device_train_batch_size": ("int", 1, None, "a positive integer, e.g. 8"),
    "gradient_accumulation_steps": ("int", 1, None, "a positive integer, e.g. 1"),
    "learning_rate": ("num", 0, None, "a positive number, e.g. 2e-4"),
    "warmup_steps": ("num", 0, None, "0 or more (below 1: a fraction of all steps), e.g. 0.03"),
    "weight_decay": ("num", 0, None, "0 or more, e.g. 0.0"),
    "logging_steps": ("num", 0, None, "a positive number, e.g. 10"),
    "save_steps": ("num", 0, None, "a positive number (below 1: a fraction of all steps), e.g. 0.25 or 500"),
    "save_total_limit": ("int", 1, None, "a positive integer, e.g. 2"),
    "temperature": ("num", 0, None, "a positive number, e.g. 0.7"),
    "top_p": ("num", 0, 1, "a number in (0, 1], e.g. 0.9"),
    "top_k": ("int", 0, None, "0 or more, e.g. 50"),
    "repetition_penalty": ("num", 0, None, "a positive number, e.g. 1.0"),
    "num_beams": ("int", 1, None, "a positive integer, e.g. 1"),
    "max_steps": ("int", -1, None, "an integer (-1: run the epochs), e.g. 100"),
    "seed": ("int", 0, None, "a non-negative integer, e.g. 42"),
    "self_replay_rows": ("int", 0, None, "0 or more rows, e.g. 48"),
    "beta": ("num", 0, None, "0 or more, e.g. 0.1"),
    "num_generations": ("int", 2, None, "an integer >= 2 (a group to compare), e.g. 4"),
    "max_completion_length": ("int", 1, None, "a positive integer, e.g. 32"),
}
_STRICT_MIN = {"lora_alpha", "num_train_epochs", "learning_rate", "logging_steps", "save_steps",
               "temperature", "top_p", "repetition_penalty"}
_MAX_INCLUSIVE = {"top_p"}
_ZERO_ALLOWED = {"eval_fraction"}  # 0 means "none"; its other bounds are strict


def check_number(problems: Problems, name: str, value) -> None:
    """Type, finiteness and range of one numeric option (None means unset/auto and passes)."""
    if value is None or name not in NUMBER_HINTS:
        return
    kind, low, high, hint = NUMBER_HINTS[name]
    ok_type = isinstance(value, int) if kind == "int" else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        problems.add(name, value, f"must be {hint}.")
        return
    if not math.isfinite(value):
        problems.add(name, value, f"must be a finite number: {hint}.")
        return
    if name in _ZERO_ALLOWED and value == 0:
        return
    too_low = value <= low if name in _STRICT_MIN | _ZERO_ALLOWED else value < low
    too_high = high is not None and (value > high if name in _MAX_INCLUSIVE else value >= high)
    if too_low or too_high:
        problems.add(name, value, f"must be {hint}.")


def _choices(tp) -> tuple | None:
    """The allowed values of a Literal or Enum type (None: any)."""
    base, _ = unwrap_optional(tp)
    if typing.get_origin(base) is typing.Literal:
        return typing.get_args(base)
    for arg in typing.get_args(base) or (base,):
        if isinstance(arg, type) and issubclass(arg, Enum):
            return tuple(member.value for member in arg)
    return None


def option_choices(name: str) -> tuple | None:
    """The allowed values of option `name`, from its type or from the TrainingArguments field of
    the same name (its enum type or its `choices` metadata); None: any value of its type."""
    if name in option_fields():
        found = _choices(option_fields()[name][1])
        if found is not None:
            return found
    extra = pass_through_field(name)
    if extra is None:
        return None
    return _choices(extra.type) or (tuple(extra.metadata["choices"]) if "choices" in extra.metadata else None)


def _check_fields(problems: Problems, config: FinetuneConfig) -> None:
    """Types and ranges of every option, from its declared type."""
    for name, (f, tp, key) in option_fields().items():
        value = getattr(getattr(config, key), name)
        base, optional = unwrap_optional(tp)
        if value is None and optional:
            continue
        if name in NUMBER_HINTS:
            check_number(problems, name, value)
            continue
        choices = option_choices(name)
        if base is bool:
            if not isinstance(value, bool):
                problems.add(name, value, "must be true or false.")
        elif choices is not None:
            if value not in choices:
                listed = ", ".join(repr(c) for c in choices)
                problems.add(name, value, f"must be one of {listed}.")
        elif base is str:
            if not isinstance(value, (str, os.PathLike)) and name != "dataset_name":
                problems.add(name, value, "must be text (a name or a path).")
        elif name == "reward_funcs":
            specs = value if isinstance(value, (list, tuple)) else [value]
            if not specs or not all(callable(v) or (isinstance(v, str) and v.strip()) for v in specs):
                problems.add(name, value, "must be reward functions: callables, built-in names "
                             "(exact_match, regex:..., json, length:N) or 'module:function' paths.")
        elif name == "reward_weights":
            if not (isinstance(value, (list, tuple)) and value and all(
                    isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in value)):
                problems.add(name, value, "must be a list of finite numbers, one per reward function.")
        elif typing.get_origin(base) is list and name != "lora_target_modules":
            # one name may stand alone (report_to="none", as TrainingArguments takes it)
            if not (isinstance(value, str) and value) and not (
                    isinstance(value, list) and all(isinstance(v, str) and v for v in value)):
                problems.add(name, value, "must be a name or a list of names.")


def _check_extras(problems: Problems, config: FinetuneConfig) -> None:
    """Pass-through TrainingArguments values against the field's type and choices."""
    stage = config.training.stage
    for name, value in config.training_extras.items():
        f = pass_through_field(name, stage if isinstance(stage, str) and stage in STAGES else None)
        if f is None:
            problems.add(name, value, f"is a setting of another training stage, not of stage={stage!r}; "
                         "drop it, or choose the stage it belongs to.")
            continue
        base, optional = unwrap_optional(f.type)
        choices = option_choices(name)
        if value is None and optional or is_auto_precision(name, value):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            problems.add(name, value, "must be a finite number.")
        elif choices is not None and not (isinstance(value, (bool, int, float)) and base in (int, float)):
            if getattr(value, "value", value) not in choices:
                problems.add(name, value, f"must be one of {', '.join(repr(c) for c in choices)}.")
        elif base is bool and not isinstance(value, bool):
            problems.add(name, value, "must be true or false.")
        elif base is int and (isinstance(value, bool) or not isinstance(value, int)):
            problems.add(name, value, f"must be an integer (TrainingArguments.{name}).")
        elif base is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
            problems.add(name, value, f"must be a number, e.g. 1e-8 (TrainingArguments.{name}).")


def _check_combinations(problems: Problems, config: FinetuneConfig) -> None:
    m, t = config.method, config.training
    if m.method == "full" and m.quantize is True:
        problems.add("method", m.method, "full fine-tuning cannot train a quantized (4-bit) model; "
                     "use method='qlora', or quantize=False.")
    if m.quantization_config is not None and not config.quantized:
        problems.add("quantization_config", m.quantization_config,
                     "is given but quantize=False; pass quantize=True to use it.")
    if t.stage != "grpo":
        for name in ("num_generations", "max_completion_length", "reward_funcs", "reward_weights"):
            if getattr(t, name) is not None:
                problems.add(name, getattr(t, name), f"applies to stage='grpo' only (this run is "
                             f"stage={t.stage!r}); drop it, or pass stage='grpo'.")
    elif not t.reward_funcs:
        problems.add("reward_funcs", t.reward_funcs, "stage='grpo' needs reward functions, e.g. "
                     "reward_funcs=['exact_match:answer'] (a built-in comparing with the 'answer' column).")
    elif t.reward_weights is not None and isinstance(t.reward_weights, (list, tuple)) and \
            len(t.reward_weights) != len(t.reward_funcs if isinstance(t.reward_funcs, (list, tuple)) else [t.reward_funcs]):
        problems.add("reward_weights", t.reward_weights, "must have one weight per reward function.")
    if not isinstance(t.output_dir, (str, os.PathLike)) or not os.fspath(t.output_dir):
        problems.add("output_dir", t.output_dir, "must be a folder path, e.g. runs/my_run.")


def target_modules_problem(value) -> str | None:
    """What is wrong with a `lora_target_modules` value before any model is known, or None
    (the names themselves are checked against the model in `model/lora.py`)."""
    if value is None or value == ALL_LINEAR:
        return None
    if not (isinstance(value, (list, tuple)) and value
            and all(isinstance(t, str) and t.strip() for t in value)):
        return "must be a non-empty list of layer names such as ['q_proj', 'v_proj'], or 'all-linear'."
    if ALL_LINEAR in value and len(value) > 1:
        return "'all-linear' already means every linear layer; pass it alone, or a list of names."
    return None


def _check_values(problems: Problems, config: FinetuneConfig) -> None:
    """Values that need a parser of their own: target modules, mappings, dtype, device, format,
    the dataset name, the quantization settings."""
    from ..data.formats import FORMATS
    from ..model.device import device_problem, dtype_problem
    from ..model.quantization import validate_quantization_config

    m, d = config.method, config.data
    issue = target_modules_problem(m.lora_target_modules)
    if issue:
        problems.add("lora_target_modules", m.lora_target_modules, issue)
    if m.quantization_config is not None:
        for issue in validate_quantization_config(m.quantization_config):
            problems.add("quantization_config", m.quantization_config, issue)
    if d.column_map is not None and not (isinstance(d.column_map, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in d.column_map.items())):
        problems.add("column_map", d.column_map, "must be a mapping of old to new column names, "
                     "e.g. {question: prompt, answer: completion}.")
    if d.format != "auto" and d.format not in FORMATS:
        problems.add("format", d.format, f"must be 'auto' or one of {list(FORMATS)}.")
    for name, check in (("dtype", dtype_problem), ("device", device_problem)):
        value = config.get(name)
        issue = check(value) if value is not None else None
        if issue:
            problems.add(name, value, issue)


def problems_of(config: FinetuneConfig, where: str = "config") -> Problems:
    problems = Problems(where)
    _check_fields(problems, config)
    _check_extras(problems, config)
    _check_combinations(problems, config)
    _check_values(problems, config)
    return problems


def validate(config: FinetuneConfig, where: str = "config") -> None:
    """Raise one ConfigError listing every problem of `config` (see the module docstring)."""
    problems_of(config, where).raise_if_any()


def check_machine(config: FinetuneConfig, problems: Problems) -> None:
    """What this machine must offer: the dataset named (a file here, a built-in, or a hub id),
    the device asked for, and a precision it runs. `FineTuner(...)` and the web page's Start run
    these after `validate`; `--print_config` does not (a config may be written for elsewhere)."""
    from ..data.sources import check_source
    from ..errors import FineTuningError
    from ..model.device import device_problem, resolve_device

    issue = check_source(config.data.dataset_name)
    if issue:
        problems.add("dataset_name", config.data.dataset_name, issue)
    if config.model.device is not None and device_problem(config.model.device):
        return  # the name itself is wrong: `validate` says so
    try:
        device = resolve_device(config.model.device)
    except FineTuningError as exc:
        problems.items.append(str(exc))
        return
    if config.training_extras.get("fp16") is True and not device.startswith("cuda"):
        problems.add("fp16", True, f"fp16 mixed precision needs a CUDA device, and this run is on "
                     f"{device!r}; leave fp16 off (bf16=True is a CPU's half precision).")
