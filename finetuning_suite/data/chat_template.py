"""The chat format: one decision, made here, that training, generation, evaluation, the server,
the web page and export all follow.

`decide_chat_format(tokenizer, model_config, ...)` returns a frozen `ChatFormat`: the template
prompts are rendered with (the tokenizer's own; `FALLBACK_CHAT_TEMPLATE` when chat data meets
a decoder-only tokenizer without one; None for plain text), whether a plain-string prompt is
wrapped as one user turn (`use_chat_template`), and the system prompt. Every part that renders
a prompt is handed this value and calls its methods; none re-derives it from the tokenizer, and
nothing sets `tokenizer.chat_template` (a run folder's and an export's tokenizer files get the
template through `tokenizer_with_template`, a copy).

    fmt = decide_chat_format(tokenizer, model.config, data_format="messages")
    text, templated = fmt.prompt_text("What is the capital of France?", tokenizer)
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

from ..errors import ConfigError
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


@dataclass(frozen=True)
class ChatFormat:
    """How prompts become the text a model reads (see the module docstring).

    template: the Jinja chat template conversations are rendered with; None: no template (a
        seq2seq model, or a tokenizer without one on non-chat data): prompts are plain text.
    wrap_text: a plain-string prompt is rendered as one user turn through the template.
    system_prompt: a system message put first when a prompt is rendered through the template.
    fallback: the template is `FALLBACK_CHAT_TEMPLATE` (the tokenizer had none).
    """

    template: str | None
    wrap_text: bool
    system_prompt: str | None = None
    fallback: bool = False

    @property
    def chat(self) -> bool:
        """Whether conversations (lists of messages) can be rendered."""
        return self.template is not None

    def renders(self, data_format: str) -> bool:
        """Whether rows of `data_format` go through the template: chat data always (when there
        is one), prompt/completion-style rows when plain prompts are wrapped."""
        return self.chat and (data_format in CHAT_FORMATS or self.wrap_text)

    def render(self, messages: list[dict], tokenizer, add_generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, chat_template=self.template,
                                             add_generation_prompt=add_generation_prompt)

    def prompt_text(self, prompt, tokenizer) -> tuple[str, bool]:
        """The text the model sees for `prompt` (a string or a list of messages), and whether
        it went through the template (then it already holds any BOS it wants)."""
        if isinstance(prompt, str):
            if not (self.wrap_text and self.chat):
                return prompt, False
            messages = [{"role": "user", "content": prompt}]
        elif isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
            if not self.chat:
                raise ConfigError("A list of messages needs a chat template, and this model's "
                                  "tokenizer has none (or it is a seq2seq model); pass a string.")
            messages = list(prompt)
        else:
            raise ConfigError(f"prompt_text must be a string or a list of messages, got "
                              f"{type(prompt).__name__}.")
        if self.system_prompt is not None and messages[0].get("role") != "system":
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        return self.render(messages, tokenizer, add_generation_prompt=True), True

    def conversation_prompt(self, messages: list[dict]):
        """What to send for a conversation so far (chat in the terminal, the web page): the
        messages when they can be rendered, else the last user turn as text."""
        if self.chat and self.wrap_text:
            return list(messages)
        return next(m["content"] for m in reversed(messages) if m["role"] == "user")


def decide_chat_format(tokenizer, model_config, *, data_format: str | None = None,
                       use_chat_template: bool = True, system_prompt: str | None = None) -> ChatFormat:
    """The chat format for this model, tokenizer and (when known) training data format."""
    if is_encoder_decoder(model_config):
        return ChatFormat(None, False, system_prompt)
    own = getattr(tokenizer, "chat_template", None)
    if own:
        return ChatFormat(own, bool(use_chat_template), system_prompt)
    if data_format in CHAT_FORMATS:
        return ChatFormat(FALLBACK_CHAT_TEMPLATE, bool(use_chat_template), system_prompt, fallback=True)
    return ChatFormat(None, False, system_prompt)


def tokenizer_with_template(tokenizer, chat_format: ChatFormat):
    """A copy of `tokenizer` carrying `chat_format`'s template, for writing a run folder or an
    export (so the files reload with the template the model was trained with)."""
    out = copy.deepcopy(tokenizer)
    if chat_format.template is not None:
        out.chat_template = chat_format.template
    return out
