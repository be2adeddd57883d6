"""bitsandbytes quantization: turn the spec's `quantize` / `quantization_config` into a
`BitsAndBytesConfig`, or `None` when quantization is off (the peft/trl converter habit).

bitsandbytes is the optional `qlora` extra: nothing here imports it unless quantization is
asked for. (peft imports it on its own whenever it is installed.)"""
from __future__ import annotations

import functools
import inspect
import math

from ..errors import ConfigError
from .device import dtype_problem, parse_dtype

# The spec's default: 4-bit NF4 with double quantization and bf16 compute (QLoRA).
DEFAULT_4BIT = {
    "load_in_4bit": True,
    "bnb_4bit_use_double_quant": True,
    "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_compute_dtype": "bfloat16",
}

_DTYPE_KEYS = ("bnb_4bit_compute_dtype", "bnb_4bit_quant_storage")
_BOOL_KEYS = ("load_in_4bit", "load_in_8bit", "bnb_4bit_use_double_quant",
              "llm_int8_enable_fp32_cpu_offload", "llm_int8_has_fp16_weight")
QUANT_TYPES = ("nf4", "fp4")


@functools.lru_cache(maxsize=None)
def _bnb_fields() -> frozenset[str]:
    from transformers import BitsAndBytesConfig

    params = inspect.signature(BitsAndBytesConfig.__init__).parameters
    return frozenset(p for p in params if p not in ("self", "kwargs"))


def validate_quantization_config(quantization_config) -> list[str]:
    """Problems with a user's `quantization_config` (empty when it is fine): unknown keys,
    values of the wrong type, an unknown quantization type or dtype."""
    from transformers import BitsAndBytesConfig

    if quantization_config is None or isinstance(quantization_config, BitsAndBytesConfig):
        return []
    if not isinstance(quantization_config, dict):
        return ["must be a dict of BitsAndBytesConfig fields or a transformers.BitsAndBytesConfig"]
    q = quantization_config
    problems = []
    unknown = sorted(set(q) - _bnb_fields())
    if unknown:
        problems.append(f"unknown keys {unknown}; valid keys are {sorted(_bnb_fields())}")
    for key in _BOOL_KEYS:
        if key in q and not isinstance(q[key], bool):
            problems.append(f"{key}={q[key]!r} must be true or false")
    if q.get("load_in_4bit") is True and q.get("load_in_8bit") is True:
        problems.append("load_in_4bit and load_in_8bit are both true; choose one")
    if "bnb_4bit_quant_type" in q and q["bnb_4bit_quant_type"] not in QUANT_TYPES:
        problems.append(f"bnb_4bit_quant_type={q['bnb_4bit_quant_type']!r} must be one of {list(QUANT_TYPES)}")
    threshold = q.get("llm_int8_threshold", 6.0)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        problems.append(f"llm_int8_threshold={threshold!r} must be a finite number, e.g. 6.0")
    for key in _DTYPE_KEYS:
        if key in q and q[key] is not None:
            issue = dtype_problem(q[key])
            if issue:
                problems.append(f"{key}={q[key]!r} {issue}")
    return problems


def get_quantization_config(quantize: bool, quantization_config=None):
    """`BitsAndBytesConfig` for these arguments, or `None` when `quantize` is false.

    A dict may omit `load_in_4bit`: 4-bit is implied unless `load_in_8bit` is set. Dtypes may be
    given as strings ("bfloat16"). `validate_quantization_config` has run by then (config checks).
    """
    if not quantize:
        return None
    from transformers import BitsAndBytesConfig
    from transformers.utils import is_bitsandbytes_available

    if not is_bitsandbytes_available():
        raise ConfigError(
            "quantize=True needs the 'bitsandbytes' package: `pip install -e '.[qlora]'` (or "
            "`pip install bitsandbytes`), or pass quantize=False."
        )
    if isinstance(quantization_config, BitsAndBytesConfig):
        return quantization_config
    fields = dict(DEFAULT_4BIT if quantization_config is None else quantization_config)
    if not fields.get("load_in_8bit"):
        fields.setdefault("load_in_4bit", True)
    for key in _DTYPE_KEYS:
        if fields.get(key) is not None:
            fields[key] = parse_dtype(fields[key], key)
    return BitsAndBytesConfig(**fields)


def keep_cpu_4bit_weights_trainable(model) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU inference kernel.

    bitsandbytes 0.50, on CPUs with AVX512-BF16, repacks a `Linear4bit` weight the first time
    the layer runs in eval mode without grad (e.g. `generate()`), and keeps the packed layout;
    a later training forward then goes through the inference kernel and fails on layers with a
    bias ("a view of a leaf Variable ... in-place operation"). Generating before training is
    our normal flow (before/after comparisons), so we switch the repacking off. Returns the
    number of layers changed.
    """
    changed = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed
