"""Text generation: the `InferenceHandler` protocol and its default.

One generation path: `DefaultInferenceHandler.generate_batch` renders a list of prompts (the
chat template training used), left-pads them for decoder-only models (right for seq2seq), and
runs one `model.generate` call with a `transformers.GenerationConfig` built from the handler's
settings. `generate` (the spec's API) is `generate_batch([prompt])[0].text`; `stream` runs the
same preparation with a `TextIteratorStreamer` in a background thread.

Rows of one batch may carry their own new-token limit and stop strings
(`generate_batch(..., max_new_tokens_each=, stop_each=)`): a row stops where its own limit or
stop string says, the call ends when every row has, and each `Generation` is counted as if the
row had been generated alone. The server (`serve/`) batches requests with different `max_tokens`
and `stop` that way.

`max_length` bounds the number of *new* tokens generated (the answer, not the prompt), and is
further capped so prompt + answer fit the model's context window (per batch: the longest prompt
decides).
"""
from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from ..config import check_number, default_of
from ..data.chat_template import ChatFormat, decide_chat_format
from ..errors import ConfigError, Problems
from ..model.facts import LENGTH_CAP, context_window, is_encoder_decoder

Prompt = str | list[dict[str, str]]


@runtime_checkable
class InferenceHandler(Protocol):
    """Turns a prompt into generated text. Pass an instance as `FineTuner(inference_handler=...)`."""

    def generate(self, prompt_text: Prompt, model, tokenizer, device: str, max_length: int) -> str: ...


@dataclass(frozen=True)
class Generation:
    """One generated answer.

    text: the answer without the prompt, special tokens removed, cut at the first stop string,
        stripped of surrounding whitespace.
    prompt_tokens: tokens in the rendered prompt (without padding).
    new_tokens: tokens generated, up to and including the EOS or the token that completed a stop
        string (padding after a finished answer is not counted).
    finished_with_eos: True when generation ended on EOS or a stop string before the limit of new
        tokens; False when it was cut by the limit.
    """

    text: str
    prompt_tokens: int
    new_tokens: int
    finished_with_eos: bool


def render_prompt(prompt: Prompt, tokenizer, model_config, use_chat_template: bool = True,
                  system_prompt: str | None = None) -> tuple[str, bool]:
    """The prompt text the model sees and whether it came from the chat template, as the chat
    format decided for this tokenizer renders it (`data.chat_template`)."""
    fmt = decide_chat_format(tokenizer, model_config, use_chat_template=use_chat_template,
                             system_prompt=system_prompt)
    return fmt.prompt_text(prompt, tokenizer)


# -- input checks ------------------------------------------------------------------------------
_EXAMPLE = "e.g. 'What is the capital of France?' or [{'role': 'user', 'content': 'Hi'}]"


def check_prompt(prompt, name: str = "prompt_text") -> None:
    """Raise ConfigError unless `prompt` is non-blank text or a non-empty list of messages."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ConfigError(f"{name}={prompt!r} is empty: pass the text to answer, {_EXAMPLE}.")
        return
    if isinstance(prompt, list):
        from ..data.formats import ROLES  # the roles training accepts too

        if not prompt:
            raise ConfigError(f"{name}=[] has no messages: pass at least one, {_EXAMPLE}.")
        for i, m in enumerate(prompt):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                    and isinstance(m.get("content"), str)):
                raise ConfigError(f"{name}[{i}]={m!r}: each message must be a dict with 'role' and "
                                  f"'content' strings, {_EXAMPLE}.")
            if m["role"] not in ROLES:
                raise ConfigError(f"{name}[{i}] has role {m['role']!r}, which is not a chat role; "
                                  f"use one of {list(ROLES)}.")
        return
    raise ConfigError(f"{name}={prompt!r} ({type(prompt).__name__}) must be a string or a list of "
                      f"messages, {_EXAMPLE}.")


def check_max_length(max_length) -> None:
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= 0:
        raise ConfigError(f"max_length={max_length!r} must be a positive integer (new tokens to "
                          "generate), e.g. max_length=64.")


def check_stop(stop) -> list[str]:
    """The stop strings as a list (a single string is accepted, as in the OpenAI API)."""
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if (not isinstance(stop, (list, tuple))
            or not all(isinstance(s, str) and s for s in stop)):
        raise ConfigError(f"stop={stop!r} must be a list of non-empty strings, e.g. stop=['\\n\\n'].")
    return list(stop)


# -- the default handler ---------------------------------------------------------------------
class DefaultInferenceHandler:
    """Greedy decoding by default; set `do_sample=True` (with temperature/top_p/top_k) to sample.
    The defaults are the configuration's (`config.GenerationArguments`).

    chat_format: how prompts are rendered (`data.chat_template.ChatFormat`); `FineTuner` hands
        its handler the run's. Without one, it is decided per call from the tokenizer with
        `use_chat_template` and `system_prompt` (the same decision, `decide_chat_format`).
    seed: reseed torch before each call (reproducible sampling).
    strip: remove whitespace around the answer (default); `strip=False` keeps it, as a raw text
        completion needs (" Paris" continues "The capital of France is").
    generate_kwargs: any other `GenerationConfig` field (e.g. `no_repeat_ngram_size=3`); names
        GenerationConfig does not know are passed to `model.generate` as model inputs.

    The sampling settings are read into a `transformers.GenerationConfig` once, when the handler
    is built (`self.generation_config`); the model's own generation config fills only what that
    leaves unset (EOS/BOS ids, ...). Greedy decoding sets temperature/top_p/top_k to their
    neutral values, so sampling values a model's generation_config carries cannot leak in.
    """

    def __init__(self, do_sample: bool = default_of("do_sample"),
                 temperature: float = default_of("temperature"), top_p: float = default_of("top_p"),
                 top_k: int = default_of("top_k"),
                 repetition_penalty: float = default_of("repetition_penalty"),
                 num_beams: int = default_of("num_beams"),
                 use_chat_template: bool = default_of("use_chat_template"),
                 system_prompt: str | None = default_of("system_prompt"),
                 seed: int | None = None, strip: bool = True, chat_format: ChatFormat | None = None,
                 **generate_kwargs: Any):
        self.do_sample = do_sample
        self.strip = strip
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.repetition_penalty, self.num_beams = repetition_penalty, num_beams
        self.use_chat_template, self.system_prompt = use_chat_template, system_prompt
        self.chat_format = chat_format
        self.seed = seed
        self.generate_kwargs = generate_kwargs
        self.generation_config, self._model_kwargs = self._build_generation_config()

    def with_chat_format(self, chat_format: ChatFormat) -> "DefaultInferenceHandler":
        """A handler with these settings that renders prompts with `chat_format`."""
        other = copy.copy(self)
        other.chat_format = chat_format
        return other

    def chat_format_for(self, tokenizer, model_config) -> ChatFormat:
        return self.chat_format or decide_chat_format(
            tokenizer, model_config, use_chat_template=self.use_chat_template,
            system_prompt=self.system_prompt)

    def _check_settings(self) -> None:
        """The configuration's own checks (`config.check_number`), plus: temperature 0 means
        greedy decoding, which is fine unless sampling was asked for."""
        problems = Problems("DefaultInferenceHandler")
        for name in ("do_sample", "strip"):
            if not isinstance(getattr(self, name), bool):
                problems.add(name, getattr(self, name), "must be True or False.")
        for name in ("temperature", "top_p", "top_k", "repetition_penalty", "num_beams"):
            if name == "temperature" and self.temperature == 0 and not isinstance(self.temperature, bool):
                if self.do_sample is True:
                    problems.add(name, 0, "0 means greedy decoding: pass do_sample=False, or a "
                                 "positive temperature to sample.")
                continue
            check_number(problems, name, getattr(self, name))
        problems.raise_if_any()

    def _build_generation_config(self):
        from transformers import GenerationConfig

        self._check_settings()
        fields: dict[str, Any] = dict(do_sample=self.do_sample, num_beams=self.num_beams,
                                      repetition_penalty=self.repetition_penalty, use_cache=True)
        if self.do_sample:
            fields.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        else:  # neutral values: a model's generation_config only fills fields left at None
            fields.update(temperature=1.0, top_p=1.0, top_k=50)
        try:
            config = GenerationConfig(**fields)
            model_kwargs = config.update(**self.generate_kwargs)
            config.validate()  # real errors raise; minor ones (unused fields) only warn
        except ValueError as exc:
            raise ConfigError(f"DefaultInferenceHandler: invalid generation settings "
                              f"{fields | self.generate_kwargs}: {exc}") from exc
        return config, model_kwargs

    def generation_kwargs(self) -> dict[str, Any]:
        """The sampling settings as a dict (what `self.generation_config` was built from)."""
        kwargs: dict[str, Any] = dict(do_sample=self.do_sample, num_beams=self.num_beams,
                                      repetition_penalty=self.repetition_penalty)
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        kwargs.update(self.generate_kwargs)
        return kwargs

    # -- the spec's API ------------------------------------------------------------------
    def generate(self, prompt_text: Prompt, model, tokenizer, device: str, max_length: int) -> str:
        check_prompt(prompt_text)
        return self.generate_batch([prompt_text], model, tokenizer, device, max_length)[0].text

    # -- batched -------------------------------------------------------------------------
    def generate_batch(self, prompts: Sequence[Prompt], model, tokenizer, device: str, max_length: int,
                       *, stop: list[str] | None = None,
                       max_new_tokens_each: Sequence[int] | None = None,
                       stop_each: Sequence[list[str] | None] | None = None) -> list[Generation]:
        """One `Generation` per prompt, in order, from a single `model.generate` call.

        Decoder-only prompts are left-padded (the tokenizer is not changed); the new-token limit
        is `max_length`, capped so the longest prompt plus its answer fit the context window.
        `stop`: strings that end an answer; the text is cut before the first one.
        `max_new_tokens_each`, `stop_each` (optional, one entry per prompt): a row's own
        new-token limit (further capped by `max_length` and the context window) and its own stop
        strings (added to `stop`); a row stops generating at its own limit or stop string, and
        its `Generation` is the one it would get alone (rows that the longest prompt would leave
        less room in the context window than alone are generated one at a time).
        Pass a few dozen prompts at a time (evaluation batches them, see `evaluate.py`).
        """
        if isinstance(prompts, (str, dict)) or not isinstance(prompts, Sequence):
            raise ConfigError(f"prompts={prompts!r} must be a list of prompts; for one prompt use "
                              "generate(prompt_text, ...).")
        for i, p in enumerate(prompts):
            check_prompt(p, f"prompts[{i}]")
        check_max_length(max_length)
        stops = check_stop(stop)
        per_row = max_new_tokens_each is not None or stop_each is not None
        limits, row_stops = self._check_rows(len(prompts), max_length, max_new_tokens_each,
                                             stop_each, stops)
        if not prompts:
            return []
        batch = self._prepare(list(prompts), model, tokenizer, device, max_length)
        window = None if batch.encoder_decoder else context_window(model.config)
        if per_row and window is not None and len(prompts) > 1 and any(
                min(n, window - k) > batch.max_new for n, k in zip(limits, batch.prompt_lengths)):
            # the longest prompt leaves the batch less room than a row would have alone: answer
            # each alone rather than cut a row short (only near the context window)
            return [self.generate_batch([p], model, tokenizer, device, max_length, stop=stop,
                                        max_new_tokens_each=[n], stop_each=[row_stop])[0]
                    for p, n, row_stop in zip(prompts, limits, row_stops)]
        limits = [min(n, batch.max_new) for n in limits]
        if per_row:
            batch.max_new = max(limits)
        config = self._call_config(batch, tokenizer, [] if per_row else stops)
        # decoder-only: the output repeats the padded prompt; seq2seq: it starts with the
        # decoder start token
        start = 1 if batch.encoder_decoder else batch.input_ids.shape[1]
        extra: dict[str, Any] = {"tokenizer": tokenizer} if stops and not per_row else {}
        if per_row:
            extra["stopping_criteria"] = _rows_criteria(start, limits, row_stops, tokenizer)
        with _inference(model):
            if self.seed is not None:
                torch.manual_seed(self.seed)
            out = model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                 generation_config=config, **extra, **self._model_kwargs)
        eos_ids = _eos_ids(model, tokenizer)
        return [_finish(row[start:start + limit].tolist(), n, tokenizer, eos_ids, row_stop, self.strip)
                for row, n, limit, row_stop in zip(out, batch.prompt_lengths, limits, row_stops)]

    def _check_rows(self, n: int, max_length: int, limits, stops_each, stops: list[str]):
        """Per-row limits and stop lists (the shared ones where none are given)."""
        if (limits is not None or stops_each is not None) and (
                self.num_beams != 1 or self.generation_config.num_return_sequences not in (None, 1)):
            raise ConfigError("max_new_tokens_each / stop_each need one sequence per prompt: "
                              "num_beams=1 and no num_return_sequences.")
        if limits is None:
            limits = [max_length] * n
        else:
            if isinstance(limits, (str, bytes)) or not isinstance(limits, Sequence) or len(limits) != n:
                raise ConfigError(f"max_new_tokens_each={limits!r} must be a list of {n} positive "
                                  "integers, one per prompt.")
            for value in limits:
                check_max_length(value)
            limits = [min(int(v), max_length) for v in limits]
        if stops_each is None:
            row_stops = [stops] * n
        else:
            if isinstance(stops_each, (str, bytes)) or not isinstance(stops_each, Sequence) \
                    or len(stops_each) != n:
                raise ConfigError(f"stop_each={stops_each!r} must be a list of {n} stop lists (or "
                                  "None), one per prompt.")
            row_stops = [stops + [s for s in check_stop(each) if s not in stops] for each in stops_each]
        return limits, row_stops

    # -- streaming -----------------------------------------------------------------------
    def stream(self, prompt: Prompt, model, tokenizer, device: str, max_length: int,
               *, stop: list[str] | None = None,
               on_finish: Callable[[Generation], None] | None = None) -> Iterator[str]:
        """Pieces of the answer as they are generated; joined, they equal
        `generate(prompt, ...)` (the same preparation and settings, stop strings honoured).

        Generation runs in a background thread that is joined before the iterator ends; closing
        the iterator early (`break`) stops generation after the current token. Inputs are
        checked when `stream` is called, before any token is generated.
        `on_finish`: called once the answer is complete (not when the iterator is closed early)
        with its `Generation` (token counts and whether it ended before the limit), the same
        `generate_batch([prompt])` returns.
        """
        check_prompt(prompt)
        check_max_length(max_length)
        stops = check_stop(stop)
        batch = self._prepare([prompt], model, tokenizer, device, max_length)
        config = self._call_config(batch, tokenizer, stops)
        return self._stream(batch, config, model, tokenizer, stops, on_finish)

    def _stream(self, batch, config, model, tokenizer, stops: list[str],
                on_finish: Callable[[Generation], None] | None = None) -> Iterator[str]:
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancel = threading.Event()

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool,
                                  device=input_ids.device)

        failure: list[BaseException] = []
        result: list[torch.Tensor] = []
        extra = {"tokenizer": tokenizer} if stops else {}

        def run():
            try:
                with torch.inference_mode():
                    if self.seed is not None:
                        torch.manual_seed(self.seed)
                    result.append(model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                   generation_config=config, streamer=streamer,
                                   stopping_criteria=StoppingCriteriaList([_Cancelled()]),
                                   **extra, **self._model_kwargs))
            except BaseException as exc:  # re-raised in the consumer
                failure.append(exc)
                streamer.text_queue.put(streamer.stop_signal, timeout=streamer.timeout)

        was_training = model.training
        model.eval()
        thread = threading.Thread(target=run, name="finetuning_suite-stream", daemon=True)
        thread.start()
        cutter = _StreamCutter(stops, self.strip)
        try:
            for piece in streamer:
                out = cutter.feed(piece)
                if out:
                    yield out
                if cutter.stopped:
                    cancel.set()
                    break
            if not failure:
                out = cutter.close()
                if out:
                    yield out
        finally:
            cancel.set()
            thread.join()
            model.train(was_training)
        if failure:
            raise failure[0]
        if on_finish is not None and result:
            start = 1 if batch.encoder_decoder else batch.input_ids.shape[1]
            on_finish(_finish(result[0][0, start:].tolist(), batch.prompt_lengths[0], tokenizer,
                              _eos_ids(model, tokenizer), stops, self.strip))

    # -- shared preparation ----------------------------------------------------------------
    def _prepare(self, prompts: list, model, tokenizer, device: str, max_length: int) -> "_Batch":
        config = model.config
        enc_dec = is_encoder_decoder(config)
        fmt = self.chat_format_for(tokenizer, config)
        rows = []
        for prompt in prompts:
            text, templated = fmt.prompt_text(prompt, tokenizer)
            # The chat template already holds any BOS it wants; do not add a second one.
            ids = tokenizer(text, add_special_tokens=not templated)["input_ids"]
            if not ids:
                raise ConfigError(f"The prompt {prompt!r} has no tokens; pass some text.")
            rows.append(ids)
        longest = max(len(r) for r in rows)
        max_new = max_length
        window = context_window(config)
        if window is not None and not enc_dec:
            if longest >= window:
                i = max(range(len(rows)), key=lambda j: len(rows[j]))
                raise ConfigError(
                    f"The prompt{f' #{i}' if len(rows) > 1 else ''} is {longest} tokens but the "
                    f"model's context window is {window}; shorten the prompt."
                )
            max_new = min(max_new, window - longest)
        elif enc_dec and (getattr(config, "max_target_positions", None) or window):
            # the decoder holds its start token and the answer
            max_new = min(max_new, (getattr(config, "max_target_positions", None) or window) - 1)
        elif max_new > LENGTH_CAP:
            raise ConfigError(
                f"max_length={max_length} new tokens: this model's config states no length limit "
                f"to cap it at, so at most {LENGTH_CAP} are allowed; pass "
                f"max_length={LENGTH_CAP} or less."
            )
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ConfigError("The tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token.")
        input_ids = torch.full((len(rows), longest), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, ids in enumerate(rows):
            # decoder-only models continue from the last position, so pad on the left; an
            # encoder reads the whole masked input, padded on the right as in training
            span = slice(0, len(ids)) if enc_dec else slice(longest - len(ids), longest)
            input_ids[i, span] = torch.tensor(ids, dtype=torch.long)
            attention[i, span] = 1
        target = _input_device(model, device)
        return _Batch(input_ids.to(target), attention.to(target), [len(r) for r in rows], max_new,
                      pad, enc_dec)

    def _call_config(self, batch: "_Batch", tokenizer, stops: list[str]):
        config = copy.deepcopy(self.generation_config)
        config.max_new_tokens = batch.max_new
        config.pad_token_id = batch.pad_id
        if stops:
            config.stop_strings = stops
        return config


@dataclass
class _Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_lengths: list[int]
    max_new: int
    pad_id: int
    encoder_decoder: bool


@contextmanager
def _inference(model):
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for value in (getattr(getattr(model, "generation_config", None), "eos_token_id", None),
                  tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int))
    return ids


def _first_stop(text: str, stops: list[str]) -> int:
    """Index of the earliest stop string in `text`, or -1."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else -1


def _finish(new: list[int], prompt_tokens: int, tokenizer, eos_ids: set[int],
            stops: list[str], strip: bool = True) -> Generation:
    tidy = str.strip if strip else str
    eos_at = next((i for i, t in enumerate(new) if t in eos_ids), None)
    body = new if eos_at is None else new[:eos_at]
    text = tokenizer.decode(body, skip_special_tokens=True)
    cut = _first_stop(text, stops) if stops else -1
    if cut >= 0:
        # the fewest tokens whose text holds a stop string: where generation was stopped
        lo, hi = 1, len(body)
        while lo < hi:
            mid = (lo + hi) // 2
            if _first_stop(tokenizer.decode(body[:mid], skip_special_tokens=True), stops) >= 0:
                hi = mid
            else:
                lo = mid + 1
        return Generation(tidy(text[:cut]), prompt_tokens, lo, True)
    if eos_at is not None:
        return Generation(tidy(text), prompt_tokens, eos_at + 1, True)
    n = len(new)
    pad = tokenizer.pad_token_id
    while n and new[n - 1] == pad:  # padding after an answer that a stop criterion ended
        n -= 1
    return Generation(tidy(text), prompt_tokens, n, False)


class _StreamCutter:
    """Turns streamed pieces into the text `generate` returns: leading and trailing whitespace
    removed (unless `strip=False`), cut before the first stop string. Text that may be the start
    of a stop string, or trailing whitespace, is held back until the next piece shows what it is."""

    def __init__(self, stops: list[str], strip: bool = True):
        self.stops, self.raw, self.sent, self.stopped = stops, "", "", False
        self.tidy = str.strip if strip else str

    def _visible(self, final: bool) -> str:
        text = self.raw
        cut = _first_stop(text, self.stops) if self.stops else -1
        if cut >= 0:
            self.stopped = True
            return self.tidy(text[:cut])
        if not final:
            hold = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])),
                       default=0)
            text = text[:len(text) - hold]
        return self.tidy(text)  # trailing whitespace waits: it is sent once text follows it

    def _emit(self, visible: str) -> str:
        if not visible.startswith(self.sent):  # cannot happen; never send text twice
            return ""
        piece, self.sent = visible[len(self.sent):], visible
        return piece

    def feed(self, piece: str) -> str:
        self.raw += piece
        return self._emit(self._visible(final=False))

    def close(self) -> str:
        return self._emit(self._visible(final=True))


def _rows_criteria(start: int, limits: list[int], stops: list[list[str]], tokenizer):
    """A stopping criterion that ends row i after `limits[i]` new tokens or once its new text
    holds one of `stops[i]` (`generate` pads a finished row until the whole batch is done)."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Rows(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            made = input_ids.shape[1] - start
            done = [made >= limit for limit in limits]
            for i, row_stops in enumerate(stops):
                if row_stops and not done[i]:
                    text = tokenizer.decode(input_ids[i, start:].tolist(), skip_special_tokens=True)
                    done[i] = _first_stop(text, row_stops) >= 0
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_Rows()])


def _input_device(model, device: str):
    """Where inputs go: the device of the embedding weights (right for device_map placement too)."""
    try:
        return model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        return torch.device(device)


def finished_answers(prompts: Sequence[Prompt], model, tokenizer, device: str, max_new_tokens: int,
                     chat_format: ChatFormat) -> list[str | None]:
    """Greedy answers to `prompts` in one batched call, rendered with `chat_format`; None for an
    answer the new-token limit cut off (it would teach a model to stop mid-sentence)."""
    handler = DefaultInferenceHandler(chat_format=chat_format)
    outs = handler.generate_batch(list(prompts), model, tokenizer, device, max_new_tokens)
    return [g.text if g.finished_with_eos else None for g in outs]
