"""Reading option values: YAML with numbers as numbers, and text turned into an option's type.

One reader for every way a value arrives: `--config x.yaml`, a `--flag value` on the command
line, a TrainingArguments pass-through flag, the web page's boxes and its Advanced YAML box.

PyYAML follows YAML 1.1, where `1e-3` (no dot) is a *string*; YAML 1.2, JSON and Python read it
as a number, and so does every user. `load_yaml` adds the YAML 1.2 float forms (`1e-3`, `1E4`,
`-2e-5`, `.5`) to PyYAML's safe loader, so `learning_rate: 1e-3` is 0.001 wherever it is written.

`coerce(name, value)` turns text (or a YAML value) into option `name`'s type: `"2e-4"` -> 0.0002,
`""` -> None on an "Empty: auto" option, `"q_proj v_proj"` -> a list, `"true"` -> True. Text that
does not convert is returned unchanged, so validation reports it with the option's own message
(`learning_rate='fast': must be a positive number, e.g. 2e-4.`) wherever it came from.
"""
from __future__ import annotations

import dataclasses
import re
import typing

import yaml

from ..errors import ConfigError

# YAML 1.2's float forms that YAML 1.1 lacks: an exponent without a dot, a leading dot.
_FLOAT_12 = re.compile(r"""^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+
                          |\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?)$""", re.X)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader plus YAML 1.2 floats."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


def load_yaml(text: str):
    """`yaml.safe_load`, with `1e-3`-style numbers read as numbers."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def parse_yaml_mapping(text: str, where: str, fix: str) -> dict:
    """The flat option mapping in YAML `text` (empty: {}); ConfigError naming `where`, the line
    and column, and `fix` when it does not parse or is not a mapping."""
    try:
        data = load_yaml(text or "")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{where}:{at}: not valid YAML ({getattr(exc, 'problem', None) or exc}). "
                          f"{fix}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a mapping of option: value (as `finetune train "
                          f"--print_config` writes it), got a {type(data).__name__}.")
    return {str(k): v for k, v in data.items()}


def scalar(text: str):
    """A command-line value as YAML reads it (`1e-8` -> 1e-08, `true` -> True, `a` -> 'a');
    text YAML cannot read stays text."""
    try:
        return load_yaml(text)
    except yaml.YAMLError:
        return text


AUTO_PRECISION = ("bf16", "fp16")  # these take "auto" (= left out): chosen by `train/precision.py`


def is_auto_precision(name: str, value) -> bool:
    """`value` of TrainingArguments field `name` leaves the precision to the package: left out
    (None) or "auto" (any case), on bf16/fp16 only."""
    return name in AUTO_PRECISION and (value is None or (isinstance(value, str) and value.lower() == "auto"))


def unwrap_optional(tp) -> tuple[typing.Any, bool]:
    """(the type without None, whether None is allowed)."""
    args = typing.get_args(tp)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return tp, False


_BOOLS = {"true": True, "yes": True, "on": True, "1": True,
          "false": False, "no": False, "off": False, "0": False}


def coerce_to(tp, value, default=dataclasses.MISSING):
    """`value` as type `tp` where it converts (see the module docstring); else unchanged."""
    base, optional = unwrap_optional(tp)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            if optional:
                return None
            return value if default is dataclasses.MISSING else default
        value = text
    origin = typing.get_origin(base)
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is int and isinstance(value, float) and value.is_integer():
        return int(value)  # 1e4 from YAML
    if origin is list:
        (item,) = typing.get_args(base) or (str,)
        if isinstance(value, tuple):
            value = list(value)
        if isinstance(value, str):
            parsed = scalar(value) if value.startswith("[") else None
            if isinstance(parsed, list):
                value = parsed
            else:  # one name, or several separated by spaces or commas ("q_proj, v_proj")
                value = [part for part in value.replace(",", " ").split() if part]
            return [coerce_to(item, v) if isinstance(v, str) else v for v in value] if item is not str \
                else [v if callable(v) else str(v) for v in value]
        if isinstance(value, list) and item is not str:
            return [coerce_to(item, v) for v in value]
        return value
    if not isinstance(value, str):
        return value
    if base is bool:
        return _BOOLS.get(value.lower(), value)
    if base in (int, float):
        number = scalar(value)
        if base is float and isinstance(number, str):
            try:  # "nan" and "inf" are numbers to Python, not to YAML: validation refuses them
                number = float(number)
            except ValueError:
                pass
        if base is float and isinstance(number, (int, float)) and not isinstance(number, bool):
            return float(number)
        if base is int and isinstance(number, int) and not isinstance(number, bool):
            return number
        if base is int and isinstance(number, float) and number.is_integer():
            return int(number)
        return value
    if base is dict:
        parsed = scalar(value)
        return parsed if isinstance(parsed, dict) else value
    return value


def coerce(name: str, value):
    """`value` as the type of option `name` (text that does not convert is returned unchanged
    for validation to report). TrainingArguments pass-through names convert to their field's
    type the same way; other names are returned as given."""
    from .options import option_fields, pass_through_field

    if name in option_fields():
        f, tp, _ = option_fields()[name]
        return coerce_to(tp, value, f.default)
    extra = pass_through_field(name)
    if extra is None:
        return value
    if isinstance(value, str):
        return coerce_to(extra.type, value) if _simple(extra.type) else scalar(value)
    return coerce_to(extra.type, value) if _simple(extra.type) else value


def _simple(tp) -> bool:
    """A TrainingArguments field type `coerce_to` knows (bool, int, float, str, Optional of them)."""
    base, _ = unwrap_optional(tp)
    return base in (bool, int, float, str)


def coerce_all(flat: dict) -> dict:
    return {name: coerce(name, value) for name, value in flat.items()}
