"""Reward functions for GRPO: Python callables, built-ins by name, and `module:function` paths.

A reward function has TRL's signature: keyword arguments `prompts`, `completions` (strings, or
`[{"role": "assistant", "content": ...}]` for conversations), `completion_ids`, and every other
column of the dataset (one value per completion), plus whatever else TRL passes (`trainer_state`,
...); it returns one float, or None (no opinion), per completion.

From the command line and YAML, `reward_funcs` names them (`reward_weights` weighs them):

- `exact_match` / `exact_match:COLUMN`: 1.0 when the completion, stripped, equals the row's
  `answer` (or COLUMN) value, else 0.0;
- `contains` / `contains:COLUMN`: 1.0 when the row's `answer` (or COLUMN) value appears in the
  completion as a whole word (case-insensitive), else 0.0: partial credit for the right content
  in the wrong form;
- `regex:PATTERN`: 1.0 when the whole stripped completion matches PATTERN (`re.fullmatch`);
- `json`: 1.0 when the completion is valid JSON (an object or a list);
- `length:N`: 1.0 for N words, falling linearly to 0.0 at 0 or 2N words;
- `brevity:N`: 1.0 for 1 to N words, N/words beyond (half for twice as long), 0.0 for an empty
  completion: a pull towards short answers that every longer answer still feels, so sampled
  answers of different lengths give GRPO a signal;
- `package.module:function`: a function of your own, imported by its path.

Every function is wrapped (`checked`) so that one that raises, returns the wrong number of
values or a non-finite value stops the run with its name, the row and the fix, instead of a
traceback deep inside the trainer.
"""
from __future__ import annotations

import importlib
import json
import math
import re
from typing import Callable

from ..errors import ConfigError, TrainingError

BUILTIN = ("exact_match", "contains", "regex", "json", "length", "brevity")


def completion_text(completion) -> str:
    """The text of one completion (a string, or a conversation's last message)."""
    if isinstance(completion, list):
        return str(completion[-1].get("content", "")) if completion else ""
    return str(completion)


def _exact_match(column: str):
    def exact_match(completions, **kwargs):
        if column not in kwargs:
            raise KeyError(f"the dataset has no {column!r} column to compare with; pass "
                           f"exact_match:<column> naming the column that holds the answer")
        return [float(completion_text(c).strip() == str(a).strip()) for c, a in zip(completions, kwargs[column])]
    exact_match.max_reward = 1.0
    return exact_match


def _contains(column: str):
    def contains(completions, **kwargs):
        if column not in kwargs:
            raise KeyError(f"the dataset has no {column!r} column to look for; pass "
                           f"contains:<column> naming the column that holds the answer")
        return [float(re.search(rf"(?<!\w){re.escape(str(a).strip())}(?!\w)", completion_text(c),
                                re.I) is not None) for c, a in zip(completions, kwargs[column])]
    contains.max_reward = 1.0
    return contains


def _regex(pattern: str):
    compiled = re.compile(pattern, re.S)

    def regex(completions, **kwargs):
        return [float(compiled.fullmatch(completion_text(c).strip()) is not None) for c in completions]
    regex.max_reward = 1.0
    return regex


def _json_valid(completions, **kwargs):
    out = []
    for c in completions:
        try:
            value = json.loads(completion_text(c).strip())
            out.append(float(isinstance(value, (dict, list))))
        except ValueError:
            out.append(0.0)
    return out


_json_valid.max_reward = 1.0


def _length(target: int):
    def length(completions, **kwargs):
        return [max(0.0, 1.0 - abs(len(completion_text(c).split()) - target) / target) for c in completions]
    length.max_reward = 1.0
    return length


def _brevity(limit: int):
    def brevity(completions, **kwargs):
        words = [len(completion_text(c).split()) for c in completions]
        return [min(1.0, limit / n) if n else 0.0 for n in words]  # an empty answer earns nothing
    brevity.max_reward = 1.0
    return brevity


def resolve(spec) -> tuple[str, Callable]:
    """(name, function) for one `reward_funcs` entry: a callable, a built-in name (with its
    argument after ':'), or an import path 'module:function'."""
    if callable(spec):
        return getattr(spec, "__name__", type(spec).__name__), spec
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"reward_funcs entry {spec!r} must be a function, a built-in name "
                          f"({', '.join(BUILTIN)}) or an import path 'module:function'.")
    name, _, arg = spec.strip().partition(":")
    if name == "exact_match":
        return spec, _exact_match(arg or "answer")
    if name == "contains":
        return spec, _contains(arg or "answer")
    if name == "regex":
        try:
            return spec, _regex(arg)
        except re.error as exc:
            raise ConfigError(f"reward_funcs entry {spec!r}: not a valid regular expression ({exc}).") from exc
    if name == "json" and not arg:
        return spec, _json_valid
    if name == "length":
        if not arg.isdigit() or int(arg) < 1:
            raise ConfigError(f"reward_funcs entry {spec!r}: give the target length in words, e.g. length:20.")
        return spec, _length(int(arg))
    if name == "brevity":
        if not arg.isdigit() or int(arg) < 1:
            raise ConfigError(f"reward_funcs entry {spec!r}: give the most words that earn full credit, e.g. brevity:1.")
        return spec, _brevity(int(arg))
    if arg:  # module:function
        try:
            function = getattr(importlib.import_module(name), arg)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"reward_funcs entry {spec!r}: cannot import {arg!r} from {name!r} ({exc}). "
                              "Check the module is importable (on PYTHONPATH) and spelled module:function.") from exc
        if not callable(function):
            raise ConfigError(f"reward_funcs entry {spec!r} is not a function.")
        return arg, function
    raise ConfigError(f"reward_funcs entry {spec!r} is not a built-in ({', '.join(BUILTIN)}, with "
                      "exact_match:COLUMN, contains:COLUMN, regex:PATTERN, length:N, brevity:N) nor a 'module:function' path.")


def checked(name: str, function: Callable) -> Callable:
    """`function` under TRL's reward signature, its results checked (see the module docstring)."""
    def reward(prompts=None, completions=None, **kwargs):
        try:
            values = function(prompts=prompts, completions=completions, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the user's function: report it with its name
            raise TrainingError(f"reward function {name!r} raised {type(exc).__name__}: {exc} (first "
                                f"prompt of the batch: {_shown(prompts)}). Fix the function; it is "
                                "called with prompts=, completions= and the dataset's other columns "
                                "as keyword arguments.") from exc
        if values is None or isinstance(values, (str, bytes)) or not hasattr(values, "__len__") \
                or len(values) != len(completions):
            count = "None" if values is None else (len(values) if hasattr(values, "__len__") else type(values).__name__)
            raise TrainingError(f"reward function {name!r} returned {count} values for {len(completions)} "
                                "completions; return a list with one float (or None) per completion.")
        out = []
        for i, value in enumerate(values):
            if value is None:
                out.append(None)
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            if not math.isfinite(number):
                raise TrainingError(f"reward function {name!r} returned {value!r} for completion {i} "
                                    f"(prompt {_shown(prompts, i)}); return finite numbers (or None for "
                                    "no opinion).")
            out.append(number)
        return out

    reward.__name__ = reward.__qualname__ = _metric_name(name)
    reward.max_reward = getattr(function, "max_reward", None)  # the built-ins': 1.0
    return reward


def _metric_name(name: str) -> str:
    """A name fit for the metrics' keys (`rewards/<name>/mean`)."""
    return re.sub(r"[^A-Za-z0-9_.:-]+", "_", name).strip("_") or "reward"


def _shown(prompts, i: int = 0) -> str:
    if not prompts:
        return "?"
    prompt = prompts[min(i, len(prompts) - 1)]
    return repr(completion_text(prompt) if isinstance(prompt, list) else prompt)[:120]


def reward_functions(specs, weights=None) -> tuple[list[Callable], list[float] | None]:
    """The checked reward functions for `reward_funcs` and their weights (checked to match)."""
    if not specs:
        raise ConfigError("stage='grpo' needs reward_funcs: Python callables, built-in names "
                          f"({', '.join(BUILTIN)}) or 'module:function' paths, e.g. "
                          "reward_funcs=['exact_match:answer'].")
    specs = list(specs) if isinstance(specs, (list, tuple)) else [specs]
    functions = [checked(*resolve(spec)) for spec in specs]
    if weights is not None:
        if len(weights) != len(functions) or not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in weights):
            raise ConfigError(f"reward_weights={list(weights)!r} must be {len(functions)} finite numbers, one "
                              "per reward function.")
        weights = [float(w) for w in weights]
    return functions, weights


NO_SIGNAL_SHARE = 0.9  # groups with all-equal rewards, over the run, from which a run is warned


def no_signal_warning(log_history: list[dict], num_generations: int) -> str | None:
    """A warning when GRPO had almost nothing to learn from: in at least NO_SIGNAL_SHARE of the
    groups every completion got the same reward (TRL's `frac_reward_zero_std`), so their
    advantages were zero and the adapter hardly moved; None otherwise. The usual cause is a
    reward the model never (or always) reaches when it samples, such as an exact match of a
    format the base model does not produce."""
    shares = [r["frac_reward_zero_std"] for r in log_history if "frac_reward_zero_std" in r]
    if not shares:
        return None
    share = sum(shares) / len(shares)
    if share < NO_SIGNAL_SHARE:
        return None
    rewards = [r["reward"] for r in log_history if "reward" in r]
    last = next((r for r in reversed(log_history) if "reward" in r), {})
    means = {k.removeprefix("rewards/").removesuffix("/mean"): v for k, v in last.items()
             if k.startswith("rewards/") and k.endswith("/mean")}
    mean = sum(rewards) / len(rewards) if rewards else float("nan")
    return (f"GRPO had almost no signal to learn from: in {share:.0%} of the groups all "
            f"{num_generations} completions got the same reward (mean reward over the run "
            f"{mean:.3g}{'; last logged ' + ', '.join(f'{k} {v:.3g}' for k, v in means.items()) if means else ''}), "
            "so their advantages were zero and the model barely changed. Give partial credit "
            "(add a reward the model sometimes earns, e.g. length:N for shorter answers, or a "
            "regex for the format), raise num_generations, or first teach the format with a "
            "short sft run.")
