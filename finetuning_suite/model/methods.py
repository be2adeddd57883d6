"""The three ways to adapt a model, side by side: `lora` (low-rank adapters on a frozen base),
`qlora` (the same on a 4-bit base) and `full` (every weight trained and saved).

All three give back a model that `Trainer` trains and `save_pretrained` saves: a PEFT adapter
folder for LoRA/QLoRA, a complete transformers model folder for full fine-tuning.
"""
from __future__ import annotations

import logging

from .dropout import use_fast_dropout
from .lora import apply_lora, build_lora_config, load_lora

logger = logging.getLogger(__name__)

METHODS = ("lora", "qlora", "full")


def prepare_model(base, method: str, *, quantized: bool, adapter_path: str | None = None,
                  lora_settings: dict | None = None):
    """`base` made trainable by `method`. `lora_settings` are `build_lora_config`'s keyword
    arguments; an `adapter_path` loads a trained adapter instead of a fresh one. The LoRA
    dropout is `LoraDropout` (the same mask, cheaper on a CPU: `model/dropout.py`)."""
    if method == "full":
        for param in base.parameters():
            param.requires_grad_(True)
        return base
    if adapter_path is not None:
        model = load_lora(base, adapter_path, quantized)
    else:
        model = apply_lora(base, build_lora_config(base, **(lora_settings or {})), quantized)
    use_fast_dropout(model)
    return model


def trainable_summary(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
