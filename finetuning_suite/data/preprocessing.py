"""Tokenization and labels: the `Preprocessor` protocol and `DefaultPreprocessor`.

Labels are built per example, before any padding: prompt tokens get -100 (unless
`train_on_inputs=True`), completion / assistant tokens and the closing EOS keep their ids.
The collator pads labels with -100, so EOS stays trained even when pad == eos. Chat data and
prompt/completion data on a chat model are rendered through the run's `ChatFormat`
(`chat_template.py`), the same value generation is handed, so the model is trained on exactly
the layout it is asked in.
"""
from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

from ..errors import ConfigError, DatasetError
from ..model.facts import LENGTH_CAP, context_window, is_encoder_decoder
from .chat_template import CHAT_FORMATS, ChatFormat, decide_chat_format
from .formats import canonical, detect_format, flatten_messages

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


@runtime_checkable
class Preprocessor(Protocol):
    """Turns a raw `datasets.Dataset` into one with `input_ids`, `attention_mask` and `labels`
    (raw columns removed). Pass an instance as `FineTuner(preprocessor=...)`. (`FineTuner` also
    hands `DefaultPreprocessor` the run's `chat_format=` keyword; a custom one gets the spec's
    three arguments.)"""

    def __call__(self, dataset, tokenizer, model_config): ...


class DefaultPreprocessor:
    """Detects the format from the columns and tokenizes with correct label masks.

    format: "auto" or a name from `formats.FORMATS` (text, prompt_completion, alpaca, messages, ...).
    column_map: rename columns first, e.g. {"question": "prompt", "answer": "completion"}.
    max_seq_length: truncate longer examples (default: the model's context window, at most
        `LENGTH_CAP` = 2048).
    train_on_inputs: also compute the loss on prompt / user tokens.
    use_chat_template: render prompt/completion data with the tokenizer's chat template on chat
        models; used only when no `chat_format` is handed to the call (standalone use).
    """

    def __init__(self, format: str = "auto", column_map: dict[str, str] | None = None,
                 max_seq_length: int | None = None, train_on_inputs: bool = False,
                 use_chat_template: bool = True):
        if max_seq_length is not None and (not isinstance(max_seq_length, int) or max_seq_length < 2):
            raise ConfigError(f"max_seq_length={max_seq_length!r} must be an integer >= 2, e.g. 1024.")
        self.format = format
        self.column_map = dict(column_map or {})
        self.max_seq_length = max_seq_length
        self.train_on_inputs = train_on_inputs
        self.use_chat_template = use_chat_template
        self.stats: dict = {}

    # -- the protocol ---------------------------------------------------------------------
    def __call__(self, dataset, tokenizer, model_config, chat_format: ChatFormat | None = None):
        if self.column_map:
            missing = [c for c in self.column_map if c not in dataset.column_names]
            if missing:
                raise DatasetError(f"column_map renames {missing}, which the dataset lacks; it has "
                                   f"{dataset.column_names}. Use those names as column_map keys.")
            dataset = dataset.rename_columns(self.column_map)
        if len(dataset) == 0:
            raise DatasetError("The dataset is empty; add examples.")
        fmt = detect_format(dataset.column_names, self.format)
        enc_dec = is_encoder_decoder(model_config)
        if enc_dec and fmt == "text":
            raise DatasetError(
                "Plain-text data cannot train an encoder-decoder (seq2seq) model, which needs "
                "input/target pairs: use prompt/completion, source/target, alpaca or messages data."
            )
        max_len = self.resolve_max_seq_length(model_config)
        if chat_format is None:
            chat_format = decide_chat_format(tokenizer, model_config, data_format=fmt,
                                             use_chat_template=self.use_chat_template)
        if fmt in CHAT_FORMATS and not enc_dec and not chat_format.chat:
            raise ConfigError("Chat data needs a chat format with a template: pass "
                              "decide_chat_format(tokenizer, model_config, data_format="
                              f"{fmt!r}) as chat_format (it falls back to a plain one).")
        chat = chat_format.renders(fmt)

        def tokenize(row, index):
            example = canonical(row, fmt, index, chat)
            if enc_dec:
                encoded = self._encode_seq2seq(example, tokenizer, max_len)
            else:
                encoded = self._encode_causal(example, tokenizer, max_len, chat_format if chat else None)
            return {**encoded, "empty_answer": _empty_answer(example)}

        tokenized = dataset.map(tokenize, with_indices=True, remove_columns=dataset.column_names,
                                desc="Tokenizing", load_from_cache_file=False)
        total = len(tokenized)
        empty = sum(tokenized["empty_answer"])
        if empty == total and not enc_dec and not self.train_on_inputs:
            # each would train only the closing EOS: the model would learn to say nothing
            raise DatasetError(
                f"All {total} examples have an empty answer (completion, output or assistant "
                "turn), so training would teach the model to answer with nothing. Fill in the "
                "answers, check column_map / format (is the answer in the column you think?), or "
                "pass train_on_inputs=True to train on the prompts as text."
            )
        if empty:
            logger.warning("%d of %d examples have an empty answer; they teach the model to stop "
                           "at once.", empty, total)
        truncated = sum(tokenized["truncated"])
        kept = tokenized.filter(lambda n: n > 0, input_columns="n_trained", load_from_cache_file=False)
        dropped = total - len(kept)
        self.stats = {"format": fmt, "examples": total, "kept": len(kept), "truncated": truncated,
                      "dropped_all_masked": dropped, "max_seq_length": max_len,
                      "train_on_inputs": self.train_on_inputs, "chat_template": chat,
                      "trained_tokens": int(sum(kept["n_trained"]))}
        if truncated:
            logger.warning("%d of %d examples were longer than max_seq_length=%d and were truncated.",
                           truncated, total, max_len)
        if dropped:
            logger.warning("%d of %d examples had no trained tokens left (after truncation or no "
                           "answer) and were dropped.", dropped, total)
        if len(kept) == 0:
            raise DatasetError(
                f"All {total} examples have every label masked (no completion/assistant tokens "
                f"within max_seq_length={max_len}). Raise max_seq_length, check that rows have "
                "answers, or pass train_on_inputs=True."
            )
        return kept.remove_columns(["truncated", "n_trained", "empty_answer"])

    # -- helpers --------------------------------------------------------------------------
    def resolve_max_seq_length(self, model_config) -> int:
        if self.max_seq_length is not None:
            return self.max_seq_length
        window = context_window(model_config)
        return min(window or LENGTH_CAP, LENGTH_CAP)

    def data_format(self, dataset) -> str:
        """The format `__call__` will read `dataset` as (after column_map)."""
        columns = [self.column_map.get(c, c) for c in dataset.column_names]
        return detect_format(columns, self.format)

    def _finish(self, ids: list[int], labels: list[int], max_len: int) -> dict:
        truncated = len(ids) > max_len
        ids, labels = ids[:max_len], labels[:max_len]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels,
                "truncated": truncated, "n_trained": sum(label != IGNORE_INDEX for label in labels)}

    def _mask(self, ids: list[int]) -> list[int]:
        return list(ids) if self.train_on_inputs else [IGNORE_INDEX] * len(ids)

    def _encode_causal(self, ex: dict, tokenizer, max_len: int, chat: ChatFormat | None) -> dict:
        eos = tokenizer.eos_token_id
        if "prompt" in ex and chat is not None:
            system = [{"role": "system", "content": chat.system_prompt}] if chat.system_prompt else []
            ex = {"messages": [*system, {"role": "user", "content": ex["prompt"]},
                               {"role": "assistant", "content": ex["completion"]}]}
        if "messages" in ex:
            ids, labels = self._encode_chat(ex["messages"], tokenizer, chat)
        elif "prompt" in ex:
            prompt = tokenizer(ex["prompt"])["input_ids"]
            answer = tokenizer(ex["completion"], add_special_tokens=False)["input_ids"] + [eos]
            ids, labels = prompt + answer, self._mask(prompt) + answer
        else:
            ids = tokenizer(ex["text"])["input_ids"]
            if not ids or ids[-1] != eos:
                ids = ids + [eos]
            labels = list(ids)
        return self._finish(ids, labels, max_len)

    def _encode_chat(self, messages: list[dict], tokenizer, chat: ChatFormat) -> tuple[list[int], list[int]]:
        """Token ids of the chat-template rendering, with labels on assistant turns only.

        Each assistant turn's character span is found by rendering the conversation up to it
        (with the generation prompt) and through it; both renderings must be prefixes of the full
        text. Tokens are then labelled by their character offsets, so tokenizer merges across a
        boundary cannot misalign labels.
        """
        eos = tokenizer.eos_token_id
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
        if last >= 0:
            messages = messages[: last + 1]  # trailing user turns teach nothing
        render = lambda msgs, gen=False: chat.render(msgs, tokenizer, gen)  # noqa: E731
        full = render(messages)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            start = len(render(messages[:i], True)) if i else 0
            end_text = render(messages[: i + 1])
            if not full.startswith(end_text):
                raise DatasetError(
                    "The tokenizer's chat template renders a conversation differently from its "
                    "prefix, so assistant turns cannot be located for label masking. Pass "
                    "DefaultPreprocessor(train_on_inputs=True) or your own Preprocessor."
                )
            spans.append((start, len(end_text)))
        # Drop whitespace after the closing EOS so the example really ends with EOS.
        stripped = full.rstrip()
        if tokenizer.eos_token and stripped.endswith(tokenizer.eos_token):
            full = stripped
        enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        labels = []
        for tok_id, (s, e) in zip(ids, enc["offset_mapping"]):
            # a token is trained if it starts inside a span or straddles the span's start
            trained = self.train_on_inputs or any(a <= s < b or s < a < e for a, b in spans)
            labels.append(tok_id if trained else IGNORE_INDEX)
        if not ids or ids[-1] != eos:
            ids, labels = ids + [eos], labels + [eos if spans or self.train_on_inputs else IGNORE_INDEX]
        return ids, labels

    def _encode_seq2seq(self, ex: dict, tokenizer, max_len: int) -> dict:
        eos = tokenizer.eos_token_id
        if "messages" in ex:
            source, target = flatten_messages(ex["messages"])
        else:
            source, target = ex["prompt"], ex["completion"]
        ids = tokenizer(source)["input_ids"]
        labels = tokenizer(text_target=target)["input_ids"] if target else []
        if labels and labels[-1] != eos:
            labels = labels + [eos]
        truncated = len(ids) > max_len or len(labels) > max_len
        ids, labels = ids[:max_len], labels[:max_len]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels,
                "truncated": truncated, "n_trained": len(labels)}


def _empty_answer(example: dict) -> bool:
    """Whether a canonical example has nothing to learn to say (blank completion or text, or no
    non-blank assistant turn)."""
    if "messages" in example:
        return not any(m["role"] == "assistant" and m["content"].strip() for m in example["messages"])
    return not (example.get("completion", example.get("text")) or "").strip()
