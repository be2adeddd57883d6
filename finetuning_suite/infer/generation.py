"""Text generation: the `InferenceHandler` protocol and its default.

`max_length` bounds the number of *new* tokens generated (the answer, not the prompt), and is
further capped so prompt + answer fit the model's context window.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from ..errors import ConfigError

Prompt = str | list[dict[str, str]]


@runtime_checkable
class InferenceHandler(Protocol):
    """Turns a prompt into generated text. Pass an instance as `FineTuner(inference_handler=...)`."""

    def generate(self, prompt_text: Prompt, model, tokenizer, device: str, max_length: int) -> str: ...


def context_window(config) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def uses_chat_template(tokenizer, model_config, enabled: bool = True) -> bool:
    return bool(enabled and getattr(tokenizer, "chat_template", None)
                and not getattr(model_config, "is_encoder_decoder", False))


def render_prompt(prompt: Prompt, tokenizer, model_config, use_chat_template: bool = True,
                  system_prompt: str | None = None) -> tuple[str, bool]:
    """The prompt text the model sees and whether it came from the chat template.

    A plain string goes through the tokenizer's chat template as one user turn when the tokenizer
    has one (the same template training uses, see `formats.py`); a list of messages always does.
    """
    if isinstance(prompt, str):
        if not uses_chat_template(tokenizer, model_config, use_chat_template):
            return prompt, False
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError("A list of messages needs a tokenizer with a chat template; pass a string.")
        messages = list(prompt)
    else:
        raise ConfigError(f"prompt_text must be a string or a list of messages, got {type(prompt).__name__}.")
    if system_prompt is not None and messages[0].get("role") != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text, True


class DefaultInferenceHandler:
    """Greedy decoding by default; set `do_sample=True` (with temperature/top_p/top_k) to sample.

    use_chat_template: wrap plain-text prompts in the tokenizer's chat template (chat models).
    system_prompt: a system message to put first when the chat template is used.
    """

    def __init__(self, do_sample: bool = False, temperature: float = 0.7, top_p: float = 0.9,
                 top_k: int = 50, repetition_penalty: float = 1.0, num_beams: int = 1,
                 use_chat_template: bool = True, system_prompt: str | None = None,
                 seed: int | None = None, **generate_kwargs: Any):
        self.do_sample = do_sample
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.repetition_penalty, self.num_beams = repetition_penalty, num_beams
        self.use_chat_template, self.system_prompt = use_chat_template, system_prompt
        self.seed = seed
        self.generate_kwargs = generate_kwargs

    def generation_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(do_sample=self.do_sample, num_beams=self.num_beams,
                                      repetition_penalty=self.repetition_penalty)
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        else:  # neutralise sampling settings a model's generation_config may carry
            kwargs.update(temperature=None, top_p=None, top_k=None)
        kwargs.update(self.generate_kwargs)
        return kwargs

    def generate(self, prompt_text: Prompt, model, tokenizer, device: str, max_length: int) -> str:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= 0:
            raise ConfigError(f"max_length={max_length!r} must be a positive integer (new tokens to generate).")
        config = model.config
        text, templated = render_prompt(prompt_text, tokenizer, config, self.use_chat_template,
                                        self.system_prompt)
        # The chat template already holds any BOS it wants; do not add a second one.
        enc = tokenizer(text, return_tensors="pt", add_special_tokens=not templated)
        n_prompt = enc["input_ids"].shape[1]
        max_new = max_length
        window = context_window(config)
        if window is not None and not getattr(config, "is_encoder_decoder", False):
            if n_prompt >= window:
                raise ConfigError(
                    f"The prompt is {n_prompt} tokens but the model's context window is {window}; "
                    "shorten the prompt."
                )
            max_new = min(max_new, window - n_prompt)
        enc = {k: v.to(_input_device(model, device)) for k, v in enc.items()}
        if self.seed is not None:
            torch.manual_seed(self.seed)
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                out = model.generate(**enc, max_new_tokens=max_new, pad_token_id=tokenizer.pad_token_id,
                                     **self.generation_kwargs())
        finally:
            model.train(was_training)
        new_tokens = out[0] if getattr(config, "is_encoder_decoder", False) else out[0][n_prompt:]
        return tokenizer.decode(new_tokens, skip_special_tokens=True).strip()


def _input_device(model, device: str):
    """Where inputs go: the device of the embedding weights (right for device_map placement too)."""
    try:
        return model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        return torch.device(device)
