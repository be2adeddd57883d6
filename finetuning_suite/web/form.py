"""The page's form <-> one validated `FinetuneConfig`.

Every knob on the page is a field of `finetuning_suite.config`: its label is the field's name,
its help text the field's `metadata["help"]`, its starting value the value of the config the
page was opened with (`finetune web --config x.yaml --lora_r 8`, else the dataclass default).
Nothing here restates a default.

Text boxes hold text; the configuration's `coerce` turns it into the field's type (`"2e-4"` ->
0.0002, `""` -> None on an "Empty: auto" field, `"q_proj v_proj"` -> a list), as it does for
command-line flags. Text that does not convert is kept as typed, so the configuration's
validation reports it with the package's own message (field, value, fix), e.g.
`learning_rate='fast': must be a positive number, e.g. 2e-4.`
"""
from __future__ import annotations

import dataclasses

from ..config import (FinetuneConfig, check_machine, coerce, coerce_all, option_choices,
                      option_fields, parse_yaml_mapping, problems_of)
from ..config.values import unwrap_optional

# The knobs shown on the Train tab, in order (everything else: the Advanced YAML box).
MODEL_KNOBS = ("model_id",)
DATA_KNOBS = ("dataset_name",)
MAIN_KNOBS = ("method", "stage", "learning_rate", "num_train_epochs", "max_steps",
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


def _fields() -> dict:
    return {name: (f, tp) for name, (f, tp, _) in option_fields().items()}


def knob(name: str) -> Knob:
    f, tp = _fields()[name]
    base, optional = unwrap_optional(tp)
    help_text = f.metadata.get("help", "")
    choices = option_choices(name)
    if choices is not None:
        return Knob(name, "choice", help_text, tuple(choices), optional)
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


# -- the Advanced YAML box -------------------------------------------------------------------
def parse_yaml(text: str) -> dict:
    """The flat options in the Advanced box (`to_yaml()` layout), coerced to their types."""
    data = parse_yaml_mapping(text, "Advanced configuration", "Fix the text, or reload the page to "
                              "start again from the resolved configuration.")
    return coerce_all(data)


def to_yaml(flat: dict) -> str:
    """The resolved configuration of `flat` as the Advanced box shows it."""
    return FinetuneConfig.from_flat(flat, where="Advanced configuration").to_yaml()


def merge(flat: dict, knob_values: dict) -> dict:
    """`flat` with the knobs' values (text coerced) on top."""
    out = dict(flat)
    for name, value in knob_values.items():
        out[name] = coerce(name, value)
    return out


def build_config(flat: dict, where: str = "finetune web") -> FinetuneConfig:
    """A validated configuration from flat options, through the configuration's one validation
    (`config.validate`, the same `FineTuner(...)` and `finetune train` use) and this machine's
    checks (device, precision): every problem in one `ConfigError` before anything is written."""
    config = FinetuneConfig.from_flat(flat, where=where)
    problems = problems_of(config, where)
    check_machine(config, problems)
    problems.raise_if_any()
    return config
