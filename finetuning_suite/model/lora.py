"""LoRA: honour every `lora_*` argument, and map the spec's T5-flavoured defaults to the model.

The spec's defaults (`lora_target_modules=["q", "v"]`, `lora_task_type=TaskType.SEQ_2_SEQ_LM`)
only fit T5. When the caller left them alone and they do not fit, we use the model's own
query/value projections and task type (one info line says so). When the caller passed them
and they do not fit, that is an error listing what the model has.
"""
from __future__ import annotations

import contextlib
import logging
import pickle
from pathlib import Path

from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import nn

from ..config.options import ALL_LINEAR
from ..errors import ConfigError
from .facts import is_encoder_decoder

logger = logging.getLogger(__name__)


# The spec's signature defaults, shown by `FineTuner`'s signature. Left out, they mean "the
# model's own choice" (whether an argument was given is known by name, see `arguments.py`).
SPEC_TARGET_MODULES = ["q", "v"]
SPEC_TASK_TYPE = TaskType.SEQ_2_SEQ_LM
SUPPORTED_TASK_TYPES = (TaskType.CAUSAL_LM, TaskType.SEQ_2_SEQ_LM)

# Query/value projection names by architecture family, for models peft's table does not know.
_QV_CANDIDATES = (("q_proj", "v_proj"), ("q", "v"), ("query", "value"), ("c_attn",),
                  ("query_key_value",), ("qkv_proj",), ("Wqkv",))


def normalise_targets(value):
    """The config's target list as peft takes it: None, "all-linear", or a list of names."""
    if isinstance(value, (list, tuple)) and list(value) == [ALL_LINEAR]:
        return ALL_LINEAR
    return list(value) if isinstance(value, tuple) else value


def resolve_task_type(requested, is_encoder_decoder: bool) -> TaskType:
    """The PEFT task type: the model's own (None: not given), or the one given if it fits."""
    fitting = TaskType.SEQ_2_SEQ_LM if is_encoder_decoder else TaskType.CAUSAL_LM
    if requested is None:
        return fitting
    task = TaskType(str(getattr(requested, "value", requested)))
    if task != fitting:
        kind = "an encoder-decoder" if is_encoder_decoder else "a decoder-only (causal)"
        raise ConfigError(
            f"lora_task_type={task.value!r} does not fit this model, which is {kind} model; "
            f"pass lora_task_type=TaskType.{fitting.value} or leave it out."
        )
    return task


def adaptable_modules(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Short names of the layers LoRA can wrap (Linear and GPT-2's Conv1D, lm_head excluded) ->
    the smallest (in, out) width among the layers of that name. Works on a meta-device model."""
    from transformers.pytorch_utils import Conv1D

    found: dict[str, tuple[int, int]] = {}
    for full, module in model.named_modules():
        short = full.split(".")[-1]
        if short == "lm_head":
            continue
        if isinstance(module, nn.Linear):
            dims = (module.in_features, module.out_features)
        elif isinstance(module, Conv1D):
            dims = tuple(module.weight.shape)
        else:
            continue
        found[short] = min(found.get(short, dims), dims, key=min)
    return found


def adaptable_module_names(model: nn.Module) -> list[str]:
    return sorted(adaptable_modules(model))


def resolve_target_modules(model: nn.Module, requested) -> list[str] | str:
    """The layers to adapt: the model's query/value projections when not given (the spec's
    default ['q', 'v'] where the model has them), else as given, checked against the model."""
    names = adaptable_module_names(model)
    requested = normalise_targets(requested)
    if isinstance(requested, str):  # "all-linear" (target_modules_problem refused other text)
        return requested
    if requested is None:
        if all(t in names for t in SPEC_TARGET_MODULES):
            return list(SPEC_TARGET_MODULES)
        model_type = getattr(model.config, "model_type", "")
        chosen = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
        if not chosen or not all(t in names for t in chosen):
            chosen = next((list(c) for c in _QV_CANDIDATES if all(t in names for t in c)), ALL_LINEAR)
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


def check_rank(model: nn.Module, targets, r: int) -> None:
    """A rank above the width of a layer it adapts adds parameters that cannot learn anything
    more (the update's rank is at most the layer's width): refuse it, with the largest useful r."""
    widths = adaptable_modules(model)
    chosen = widths if targets == ALL_LINEAR else {t: widths[t] for t in targets if t in widths}
    if not chosen:
        return
    name, dims = min(chosen.items(), key=lambda item: min(item[1]))
    if r > min(dims):
        raise ConfigError(f"lora_r={r!r} is larger than the layers it adapts ({name!r} is "
                          f"{dims[0]} x {dims[1]}); pass lora_r={min(dims)} or less, e.g. 16.")


def check_against_config(model_config, target_modules, r: int) -> None:
    """The LoRA layer names and rank checked against the model `model_config` describes, built
    on the meta device (no weights, no memory): what the web page's Start runs before it writes
    anything, with the same checks (and messages) `FineTuner` runs on the loaded model."""
    import torch

    from .loading import model_class

    with torch.device("meta"):
        model = model_class(model_config).from_config(model_config)
    check_rank(model, resolve_target_modules(model, target_modules), r)


def build_lora_config(model, *, r, alpha, dropout, bias, target_modules, task_type,
                      use_rslora: bool = False) -> LoraConfig:
    """peft's LoraConfig for `model`; `target_modules` / `task_type` None mean: the model's own
    choice (see module docstring)."""
    from transformers.pytorch_utils import Conv1D

    is_enc_dec = is_encoder_decoder(model.config)
    targets = resolve_target_modules(model, target_modules)
    check_rank(model, targets, r)
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
    from peft import PeftModel

    logger.info("Loading adapter %s (its LoRA settings replace the lora_* arguments).", adapter_path)
    with _adapter_errors(model, adapter_path):
        return PeftModel.from_pretrained(_prepare(model, quantized), adapter_path, is_trainable=True)


def attach_lora(peft_model, adapter_path: str, adapter_name: str) -> None:
    """Put another saved adapter on a `PeftModel` that already holds one, frozen, under
    `adapter_name` (not made active: `set_adapter` picks it). Only its LoRA weights are added;
    the base is shared."""
    logger.info("Loading adapter %s as %r beside the adapters already loaded.", adapter_path, adapter_name)
    with _adapter_errors(peft_model.get_base_model(), adapter_path):
        peft_model.load_adapter(adapter_path, adapter_name=adapter_name, is_trainable=False)


@contextlib.contextmanager
def _adapter_errors(model, adapter_path: str):
    """Loading an adapter: pickles torch refuses, damaged files and adapters that do not fit the
    model become a ModelLoadError that names the folder and the fix."""
    import torch
    from safetensors import SafetensorError

    from ..errors import ModelLoadError
    from .loading import damaged_weights, read_json_file, unsafe_pickle_message

    try:
        yield
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(unsafe_pickle_message(f"The adapter in {adapter_path!r}", exc)) from exc
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
