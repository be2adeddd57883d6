"""The page's form <-> one validated `FinetuneConfig`.

Every knob on the page is a field of `finetuning_suite.config`: its label is the field's name,
its help text the field's `metadata["help"]`, its starting value the value of the config the
page was opened with (`finetune web --config x.yaml --lora_r 8`, else the dataclass default).
Nothing here restates a default.

Text boxes hold text; `coerce` turns it into the field's type (`"2e-4"` -> 0.0002, `""` -> None
on an "Empty: auto" field, `"q_proj v_proj"` -> a list). Text that does not convert is kept as
typed, so `FinetuneConfig.validate()` reports it with the package's own message (field, value,
fix), e.g. `learning_rate='fast': must be a positive number, e.g. 2e-4.`
"""
from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any

from ..config import SECTIONS, FinetuneConfig, parse_yaml_mapping
from ..errors import Problems

# The knobs shown on the Train tab, in order (everything else: the Advanced YAML box).
MODEL_KNOBS = ("model_id",)
DATA_KNOBS = ("dataset_name",)
MAIN_KNOBS = ("method", "learning_rate", "num_train_epochs", "max_steps",
              "per_device_train_batch_size", "lora_r", "lora_alpha", "eval_fraction",
              "max_seq_length", "logging_steps", "train_on_inputs", "self_replay", "eval_before")
KNOBS = MODEL_KNOBS + DATA_KNOBS + MAIN_KNOBS

# Set by the page itself, not by the user (each run gets its own folder in the workspace; an
# overwrite would delete the job's own log).
PAGE_OWNED = ("output_dir", "overwrite_output_dir", "resume_from_checkpoint")


@dataclasses.dataclass(frozen=True)
class Knob:
    name: str
    kind: str  # "text", "bool" or "choice"
    help: str
    choices: tuple = ()
    optional: bool = False  # None allowed (shown as an empty box)


@functools.lru_cache(maxsize=None)
def _fields() -> dict[str, tuple[dataclasses.Field, Any]]:
    """name -> (dataclass field, resolved type) for every option of the configuration."""
    out = {}
    for cls in SECTIONS.values():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            out[f.name] = (f, hints[f.name])
    return out


def _unwrap(tp) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    args = typing.get_args(tp)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return tp, False


def knob(name: str) -> Knob:
    f, tp = _fields()[name]
    base, optional = _unwrap(tp)
    help_text = f.metadata.get("help", "")
    if typing.get_origin(base) is typing.Literal:
        return Knob(name, "choice", help_text, tuple(typing.get_args(base)), optional)
    if base is bool:
        return Knob(name, "bool", help_text, (), optional)
    return Knob(name, "text", help_text, (), optional)


def help_text(name: str) -> str:
    return _fields()[name][0].metadata.get("help", "")


def as_text(value) -> str:
    """A config value as a text box shows it (None: empty)."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    if isinstance(value, dict):
        import yaml

        return yaml.safe_dump(value, default_flow_style=True).strip()
    return str(value)


def coerce(name: str, value):
    """`value` (text from a box, or a YAML value) as the type of option `name`; text that does
    not convert is returned unchanged for `validate()` to report. Options that are not fields
    of the configuration (TrainingArguments pass-through) are returned as given."""
    if name not in _fields():
        return value
    f, tp = _fields()[name]
    base, optional = _unwrap(tp)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            if optional:
                return None
            return f.default if f.default is not dataclasses.MISSING else value
        value = text
    if value is None or not isinstance(value, str):
        if base is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value
    if base is bool:
        return {"true": True, "yes": True, "on": True, "1": True,
                "false": False, "no": False, "off": False, "0": False}.get(value.lower(), value)
    if base is int:
        try:
            return int(value)
        except ValueError:
            return value
    if base is float:
        try:
            return float(value)
        except ValueError:
            return value
    if typing.get_origin(base) is list:
        import yaml

        if value.startswith("["):
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                return value
            return [str(v) for v in parsed] if isinstance(parsed, list) else value
        return [part for part in value.replace(",", " ").split() if part]
    if base is dict:
        import yaml

        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        return parsed if isinstance(parsed, dict) else value
    return value


# -- the Advanced YAML box -------------------------------------------------------------------
def parse_yaml(text: str) -> dict:
    """The flat options in the Advanced box (`to_yaml()` layout), coerced to their types."""
    data = parse_yaml_mapping(text, "Advanced configuration", "Fix the text, or reload the page to "
                              "start again from the resolved configuration.")
    return {str(k): coerce(str(k), v) for k, v in data.items()}


def to_yaml(flat: dict) -> str:
    """The resolved configuration of `flat` as the Advanced box shows it."""
    return FinetuneConfig.from_flat(flat, where="Advanced configuration").to_yaml()


def merge(flat: dict, knob_values: dict) -> dict:
    """`flat` with the knobs' values (text coerced) on top."""
    out = dict(flat)
    for name, value in knob_values.items():
        out[name] = coerce(name, value)
    return out


def check_choices(flat: dict, where: str) -> None:
    """Literal-typed options (lora_task_type, ...) must be one of their choices; the CLI's
    argparse checks these, `validate()` does not check all of them."""
    problems = Problems(where)
    for name, value in flat.items():
        if name not in _fields() or value is None:
            continue
        k = knob(name)
        if k.kind == "choice" and value not in k.choices:
            problems.add(name, value, f"must be one of {list(k.choices)}.")
    problems.raise_if_any()


def build_config(flat: dict, where: str = "finetune web") -> FinetuneConfig:
    """A validated configuration from flat options: unknown names, types, ranges and choices
    are all reported in one `ConfigError` before anything is written."""
    config = FinetuneConfig.from_flat(flat, where=where)
    config.validate(where)
    check_choices(flat, where)
    return config
