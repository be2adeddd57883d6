"""LoRA: honour every `lora_*` argument, and map the spec's T5-flavoured defaults to the model.

The spec's defaults (`lora_target_modules=["q", "v"]`, `lora_task_type=TaskType.SEQ_2_SEQ_LM`)
only fit T5. When the caller left them alone and they do not fit, we use the model's own
query/value projections and task type (one info line says so). When the caller passed them
and they do not fit, that is an error listing what the model has.
"""
from __future__ import annotations

import logging
from pathlib import Path

from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import nn

from .facts import is_encoder_decoder
from ..errors import ConfigError

logger = logging.getLogger(__name__)


class _SpecDefault(str):
    """The spec's default task type, told apart from the same value passed explicitly."""

    def __repr__(self):
        return f"TaskType.{str(self)}"


# Identity marks "left at the default": `lora_target_modules is SPEC_TARGET_MODULES`.
SPEC_TARGET_MODULES = ["q", "v"]
SPEC_TASK_TYPE = _SpecDefault(TaskType.SEQ_2_SEQ_LM.value)
SUPPORTED_TASK_TYPES = (TaskType.CAUSAL_LM, TaskType.SEQ_2_SEQ_LM)

# Query/value projection names by architecture family, for models peft's table does not know.
_QV_CANDIDATES = (("q_proj", "v_proj"), ("q", "v"), ("query", "value"), ("c_attn",),
                  ("query_key_value",), ("qkv_proj",), ("Wqkv",))


def parse_task_type(value) -> TaskType:
    try:
        task = TaskType(str(value.value if isinstance(value, TaskType) else value))
    except ValueError:
        task = None
    if task not in SUPPORTED_TASK_TYPES:
        raise ConfigError(
            f"lora_task_type={value!r}: FineTuner trains language models; use "
            "TaskType.CAUSAL_LM (GPT-2, Llama, ...) or TaskType.SEQ_2_SEQ_LM (T5, BART, ...)."
        )
    return task


def resolve_task_type(requested, is_encoder_decoder: bool) -> TaskType:
    fitting = TaskType.SEQ_2_SEQ_LM if is_encoder_decoder else TaskType.CAUSAL_LM
    if requested is None or requested is SPEC_TASK_TYPE:
        if fitting != TaskType.SEQ_2_SEQ_LM:
            logger.info("lora_task_type: the spec's default SEQ_2_SEQ_LM does not fit this "
                        "decoder-only model; using %s.", fitting.value)
        return fitting
    task = parse_task_type(requested)
    if task != fitting:
        kind = "an encoder-decoder" if is_encoder_decoder else "a decoder-only (causal)"
        raise ConfigError(
            f"lora_task_type={task.value!r} does not fit this model, which is {kind} model; "
            f"pass lora_task_type=TaskType.{fitting.value} or leave it out."
        )
    return task


def adaptable_module_names(model: nn.Module) -> list[str]:
    """Short names of the layers LoRA can wrap (Linear and GPT-2's Conv1D), lm_head excluded."""
    from transformers.pytorch_utils import Conv1D

    names = set()
    for full, module in model.named_modules():
        if isinstance(module, (nn.Linear, Conv1D)) and full.split(".")[-1] != "lm_head":
            names.add(full.split(".")[-1])
    return sorted(names)


def resolve_target_modules(model: nn.Module, requested) -> list[str] | str:
    names = adaptable_module_names(model)
    if isinstance(requested, str):  # "all-linear" or a regex: peft validates it
        return requested
    if requested is None or requested is SPEC_TARGET_MODULES:
        requested = SPEC_TARGET_MODULES
        if all(t in names for t in requested):
            return list(requested)
        model_type = getattr(model.config, "model_type", "")
        chosen = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
        if not chosen or not all(t in names for t in chosen):
            chosen = next((list(c) for c in _QV_CANDIDATES if all(t in names for t in c)),
                          "all-linear")
        logger.info("lora_target_modules: the spec's default ['q', 'v'] does not fit %s; using %s.",
                    model_type or type(model).__name__, chosen)
        return list(chosen) if not isinstance(chosen, str) else chosen
    missing = [t for t in requested if t not in names]
    if missing:
        raise ConfigError(
            f"lora_target_modules={list(requested)!r}: this model has no layer named {missing}. "
            f"Layers LoRA can adapt here: {names}. Or pass 'all-linear'."
        )
    return list(requested)


def validate_lora_targets(problems, *, lora_target_modules, lora_task_type) -> None:
    """Add problems with the target modules and task type to `problems` (an errors.Problems);
    None or the spec's defaults mean "the model's own choice"."""
    if lora_target_modules is not None and lora_target_modules is not SPEC_TARGET_MODULES:
        targets_ok = isinstance(lora_target_modules, str) or (
            isinstance(lora_target_modules, (list, tuple)) and lora_target_modules
            and all(isinstance(t, str) and t for t in lora_target_modules))
        if not targets_ok:
            problems.add("lora_target_modules", lora_target_modules,
                         "must be a non-empty list of layer names such as ['q_proj', 'v_proj'], or 'all-linear'.")
    if lora_task_type is not None and lora_task_type is not SPEC_TASK_TYPE:
        try:
            parse_task_type(lora_task_type)
        except ConfigError as exc:
            problems.items.append(str(exc))


def build_lora_config(model, *, r, alpha, dropout, bias, target_modules, task_type,
                      use_rslora: bool = False) -> LoraConfig:
    """peft's LoraConfig for `model`; `target_modules` / `task_type` None (or the spec's
    defaults) mean: the model's own choice (see module docstring)."""
    from transformers.pytorch_utils import Conv1D

    is_enc_dec = is_encoder_decoder(model.config)
    targets = resolve_target_modules(model, target_modules)
    # GPT-2's Conv1D stores weights transposed; peft must be told (it warns and fixes otherwise).
    conv1d = any(isinstance(m, Conv1D) and (isinstance(targets, str) or name.split(".")[-1] in targets)
                 for name, m in model.named_modules())
    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, bias=bias, target_modules=targets,
        task_type=resolve_task_type(task_type, is_enc_dec), fan_in_fan_out=conv1d,
        use_rslora=use_rslora,
    )


def _prepare(model, quantized: bool):
    """A k-bit model is prepared for training (norms in fp32, inputs requiring grads); gradient
    checkpointing stays a TrainingArguments choice (`gradient_checkpointing=True`) rather than
    being forced on here."""
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False) if quantized else model


def apply_lora(model, lora_config: LoraConfig, quantized: bool):
    """Wrap `model` with a fresh LoRA adapter."""
    return get_peft_model(_prepare(model, quantized), lora_config)


def load_lora(model, adapter_path: str, quantized: bool):
    """Put a saved adapter on `model`, trainable (its LoRA settings replace the lora_* arguments)."""
    import torch
    from peft import PeftModel
    from safetensors import SafetensorError

    from ..errors import ModelLoadError
    from .loading import damaged_weights, read_json_file

    logger.info("Loading adapter %s (its LoRA settings replace the lora_* arguments).", adapter_path)
    try:
        return PeftModel.from_pretrained(_prepare(model, quantized), adapter_path, is_trainable=True)
    except SafetensorError as exc:
        raise ModelLoadError(
            f"{damaged_weights(adapter_path) or 'The adapter weights in ' + repr(adapter_path)} is "
            f"damaged or incomplete ({exc}). Copy the adapter folder again, or retrain it."
        ) from exc
    except (ValueError, RuntimeError, KeyError) as exc:  # layer names or shapes that do not fit
        if isinstance(exc, torch.OutOfMemoryError):
            raise
        trained_on = read_json_file(Path(adapter_path) / "adapter_config.json", "adapter").get(
            "base_model_name_or_path")
        base = getattr(model.config, "_name_or_path", None) or type(model).__name__
        raise ModelLoadError(
            f"The adapter in {adapter_path!r} does not fit the model it was put on: it was trained "
            f"on {trained_on!r}, and the model loaded is {base!r} ({type(exc).__name__}: "
            f"{_first_sentence(exc)}). Pass the adapter's own base as model_id (or load the adapter "
            "folder alone as model_id), or use an adapter trained on this model."
        ) from exc


def _first_sentence(exc: BaseException, limit: int = 240) -> str:
    text = str(exc).split(". ")[0]
    return text if len(text) <= limit else text[:limit] + "..."
