"""The chat template: one decision, made here, that training and generation both follow.

A prompt is rendered with the tokenizer's chat template when the model is decoder-only, the
tokenizer has a template and the user did not switch it off (`use_chat_template=False`).
A tokenizer without a template that is trained on chat data gets `FALLBACK_CHAT_TEMPLATE`;
the facade installs it once, before tokenizing, and saves it with the tokenizer, so generation
after training (and after reloading) renders prompts exactly as training did.
"""
from __future__ import annotations

import logging

from ..model.facts import is_encoder_decoder

logger = logging.getLogger(__name__)

# For tokenizers without a chat template (GPT-2, base models) trained on chat data. The
# generation prompt ends at "assistant:" (no space) because BPE tokenizers glue the space to the
# next word: the model then learns to emit " hello", the token it will be asked for.
FALLBACK_CHAT_TEMPLATE = (  # newlines as expressions: HF renders templates with trim_blocks
    "{% for message in messages %}{{ message['role'] + ': ' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
)
CHAT_FORMATS = ("messages", "sharegpt")


def uses_chat_template(tokenizer, model_config, enabled: bool = True) -> bool:
    """Whether prompts are rendered with the chat template (training and generation alike)."""
    return bool(enabled and getattr(tokenizer, "chat_template", None)
                and not is_encoder_decoder(model_config))


def template_for(tokenizer, model_config, data_format: str | None) -> str | None:
    """The chat template the tokenizer should carry for training on `data_format`: its own, or
    the fallback when chat data meets a tokenizer without one (decoder-only models only)."""
    own = getattr(tokenizer, "chat_template", None)
    if own or is_encoder_decoder(model_config) or data_format not in CHAT_FORMATS:
        return own
    logger.info("The tokenizer has no chat template; using a plain 'role: content' template "
                "(saved with the tokenizer, so generation uses it too).")
    return FALLBACK_CHAT_TEMPLATE
