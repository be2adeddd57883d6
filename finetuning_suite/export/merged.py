"""The merged model: the trained adapter folded into a copy of the base weights, saved as a plain
transformers folder (safetensors, config, generation config, tokenizer with its chat template).

The live `FineTuner` is never changed: the base model is loaded again from `ft.source` (where
the live base came from), un-quantized, on the CPU in float32; a fresh PEFT wrapper with the
same `LoraConfig` gets the trained adapter weights, and peft's `merge_and_unload` folds them in
(`W + scale * B @ A`, computed in float32, then cast once to `ft.dtype`).

A 4-bit (or 8-bit) base is dequantized first, as unsloth's merged save and axolotl's `--dequant`
do: each quantized weight of the live model is dequantized (bitsandbytes, through peft's
`dequantize_module_weight`) into the float32 copy, and the adapter is merged there. Merging
into the 4-bit model itself would re-quantize `W + BA` and lose the adapter's small updates
(PEFT's known accuracy problem); merging into the *original* float32 weights instead keeps the
adapter but drops the NF4 rounding it was trained against. Measured on the embedded model
(`bench/results/export.md`): the NF4-rounded base alone already changes most greedy answers of
the 135M model, so only the dequantized merge reproduces what the trained QLoRA model generates.

method="full" has no adapter: the live model is saved as it is (read, not changed).
"""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch

from ..data.chat_template import tokenizer_with_template
from ..errors import ConfigError
from ..model.facts import is_encoder_decoder
from ..model.loading import load_config, load_model

logger = logging.getLogger(__name__)


def has_adapter(model) -> bool:
    """True for a PEFT-wrapped model (LoRA / QLoRA), False for a plain one (method='full')."""
    return bool(getattr(model, "peft_config", None))


def _trust_remote_code(ft) -> bool:
    return bool(getattr(getattr(ft.config, "model", None), "trust_remote_code", False))


def reload_base(ft):
    """The base model of `ft` loaded again from its source: un-quantized, float32, on the CPU."""
    config = load_config(ft.source, _trust_remote_code(ft))
    base = load_model(ft.source, config, "cpu", torch.float32, None, _trust_remote_code(ft))
    base.config.pad_token_id = ft.tokenizer.pad_token_id
    return base


def dequantize_into(ft, base) -> int:
    """Copy the dequantized weight of every bitsandbytes-quantized layer of the live model into
    the matching layer of `base` (a float32 copy of the same architecture); return how many."""
    from peft.utils.integrations import dequantize_module_weight, get_bnb_param_type
    from transformers.pytorch_utils import Conv1D

    plain = dict(base.named_modules())
    count = 0
    for name, module in ft.model.named_modules():
        weight = module._parameters.get("weight")  # its own: peft's wrappers only point to it
        if weight is None or not get_bnb_param_type(weight):
            continue
        target_name = name.removeprefix("base_model.model.").removesuffix(".base_layer")
        target = plain.get(target_name)
        if target is None or getattr(target, "weight", None) is None:
            raise ConfigError(f"Cannot dequantize {name!r}: the reloaded base has no layer "
                              f"{target_name!r}. Export the adapter alone (merged=False).")
        value = dequantize_module_weight(module).detach().to("cpu", torch.float32)
        if isinstance(target, Conv1D):  # GPT-2 stores (in, out); bitsandbytes holds (out, in)
            value = value.t()
        if value.shape != target.weight.shape:
            raise ConfigError(f"Cannot dequantize {name!r}: shape {tuple(value.shape)} does not "
                              f"fit {tuple(target.weight.shape)}. Export the adapter alone (merged=False).")
        with torch.no_grad():
            target.weight.copy_(value)
        count += 1
    return count


def adapter_state(model) -> tuple[dict, object, str]:
    """(the active adapter's weights on the CPU in float32, its PEFT config, its name)."""
    from peft.utils import get_peft_model_state_dict

    name = model.active_adapter if isinstance(model.active_adapter, str) else model.active_adapter[0]
    state = get_peft_model_state_dict(model, adapter_name=name)
    state = {k: v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu()
             for k, v in state.items()}
    return state, copy.deepcopy(model.peft_config[name]), name


def apply_adapter(base, state: dict, peft_config, name: str = "default"):
    """`base` wrapped with a fresh adapter of `peft_config` holding `state`; every adapter
    weight must land (a missing one would silently merge the untrained initialisation)."""
    from peft import get_peft_model
    from peft.utils import set_peft_model_state_dict

    peft_config.inference_mode = True
    wrapped = get_peft_model(base, peft_config, adapter_name=name)
    result = set_peft_model_state_dict(wrapped, state, adapter_name=name)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise ConfigError(f"The trained adapter has weights the rebuilt model has no place for: "
                          f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}. Export the "
                          "adapter alone (merged=False) and merge it by hand.")
    wanted = {k for k in wrapped.state_dict() if f".{name}." in k or k.endswith(f".{name}")}
    missing = sorted(k for k in (getattr(result, "missing_keys", []) or []) if k in wanted)
    if missing:
        raise ConfigError(f"The trained adapter lacks weights for {missing[:5]}; the export would "
                          "merge untrained values. Export the adapter alone (merged=False).")
    return wrapped


def merged_model(ft, *, quantized_base: str = "dequantize"):
    """A plain transformers model with the adapter merged in, on the CPU in `ft.dtype`
    (method='full': the live model itself, which the caller only reads).

    quantized_base: for a 4-/8-bit base, "dequantize" (the weights the adapter was trained
    against) or "original" (the un-quantized weights from `ft.source`; for measurements)."""
    if not has_adapter(ft.model):
        return ft.model
    if quantized_base not in ("dequantize", "original"):
        raise ConfigError(f"quantized_base={quantized_base!r} must be 'dequantize' or 'original'.")
    state, peft_config, name = adapter_state(ft.model)
    base = reload_base(ft)
    if quantized_base == "dequantize":
        dequantized = dequantize_into(ft, base)
        if dequantized:
            logger.info("Merging into the dequantized weights of %d quantized layers.", dequantized)
    wrapped = apply_adapter(base, state, peft_config, name)
    merged = wrapped.merge_and_unload(safe_merge=True)
    merged.to(ft.dtype)
    merged.eval()
    return merged


def export_tokenizer(ft):
    """A copy of the finetuner's tokenizer as trained (the run's chat template, pad token),
    padding on the left for decoder-only models, as batched generation needs."""
    tokenizer = tokenizer_with_template(ft.tokenizer, ft.chat_format)
    if not is_encoder_decoder(ft.model.config):
        tokenizer.padding_side = "left"
    return tokenizer


def save_tokenizer(tokenizer, folder: Path) -> None:
    """`save_pretrained`, recording the padding side too (transformers saves only the one the
    tokenizer was loaded with, and `load_pretrained` sets right padding for training)."""
    tokenizer.save_pretrained(folder)
    config_file = Path(folder) / "tokenizer_config.json"
    if config_file.is_file():
        data = json.loads(config_file.read_text(encoding="utf-8"))
        data["padding_side"] = tokenizer.padding_side
        config_file.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _eos_ids(generation_config, tokenizer) -> list[int]:
    """The ids `FineTuner.generate` stops on: the model's EOS ids and the tokenizer's."""
    ids: list[int] = []
    value = getattr(generation_config, "eos_token_id", None)
    for v in (value if isinstance(value, (list, tuple)) else [value]) + [tokenizer.eos_token_id]:
        if isinstance(v, int) and v not in ids:
            ids.append(v)
    return ids


def save_merged(ft, model, folder: Path) -> dict[str, Path]:
    """Write `model` (from `merged_model`) and the tokenizer into `folder`; return the main
    files. The config and generation config are copies adjusted for plain transformers use:
    `use_cache` on, the pad id of the tokenizer, and every EOS id `FineTuner.generate` stops
    on, so `model.generate` ends answers where the package does."""
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer = export_tokenizer(ft)
    save_tokenizer(tokenizer, folder)

    config = copy.deepcopy(model.config)
    config.use_cache = True
    config.pad_token_id = tokenizer.pad_token_id
    if hasattr(config, "quantization_config"):  # only on a live full model; never quantized here
        del config.quantization_config
    config.save_pretrained(folder)
    source = getattr(ft.model, "generation_config", None) or getattr(model, "generation_config", None)
    if source is not None:
        generation = copy.deepcopy(source)
        eos = _eos_ids(generation, tokenizer)
        if eos:
            generation.eos_token_id = eos[0] if len(eos) == 1 else eos
        generation.pad_token_id = tokenizer.pad_token_id
        generation.save_pretrained(folder)

    files = {"model": folder / "model.safetensors", "config": folder / "config.json"}
    if not files["model"].is_file():  # a sharded save of a large model
        files["model"] = folder / "model.safetensors.index.json"
    tokenizer_file = folder / "tokenizer.json"
    files["tokenizer"] = tokenizer_file if tokenizer_file.is_file() else folder / "tokenizer_config.json"
    return files
