"""Evaluation: loss and perplexity on a tokenized eval set, and generation metrics on rows that
have a reference answer.

- `reference_rows(dataset, data_format, chat_model)`: the (prompt, reference) pairs of a raw
  dataset, prompts shaped as training renders them.
- `generation_metrics(handler, rows, ...)`: batched generation over those rows; exact match,
  chrF (sacrebleu), the share of answers that ended with EOS, and every sample.
- `loss_metrics(model, tokenized_dataset, collator)`: token-weighted mean loss and perplexity.
"""
from __future__ import annotations

import math
import time

import torch

from ..data.formats import canonical, flatten_messages
from ..errors import ConfigError
from .generation import _input_device

IGNORE_INDEX = -100


# -- rows with references --------------------------------------------------------------------
def reference_rows(dataset, data_format: str, chat_model: bool) -> list[dict]:
    """The rows of a raw dataset that have a reference answer, as
    `{"prompt": str | list[messages], "reference": str}`.

    dataset: a `datasets.Dataset` (or any iterable of dicts) with the user's columns (after any
        `column_map` rename); data_format: from `formats.detect_format`; chat_model: whether the
        rows' prompts go through the chat template (`ChatFormat.renders(data_format)`).

    Pair and alpaca rows give (prompt, completion) as training sees them. Chat rows give the
    history before the last assistant turn and that turn as the reference; for a model without a
    chat template (seq2seq), the history is flattened to 'role: content' lines as in training.
    Text rows have no reference; rows with an empty prompt or reference are skipped.
    """
    if data_format == "text":
        return []
    rows = []
    for index, row in enumerate(dataset):
        c = canonical(row, data_format, index, chat_model)
        if "messages" in c:
            messages = c["messages"]
            last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
            if last is None or not any(m["role"] != "system" for m in messages[:last]):
                continue
            prompt = messages[:last] if chat_model else flatten_messages(messages)[0]
            reference = messages[last]["content"]
        elif "prompt" in c:
            prompt, reference = c["prompt"], c["completion"]
        else:
            continue
        if (isinstance(prompt, str) and not prompt.strip()) or not reference.strip():
            continue
        rows.append({"prompt": prompt, "reference": reference})
    return rows


def prompt_as_text(prompt) -> str:
    """A prompt for display: itself, or a conversation as 'role: content' lines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


# -- generation metrics ----------------------------------------------------------------------
def exact_match(generated: list[str], references: list[str]) -> float:
    """Share (0..1) of answers equal to their reference after stripping surrounding whitespace."""
    if not references:
        return float("nan")
    return sum(g.strip() == r.strip() for g, r in zip(generated, references)) / len(references)


def chrf(generated: list[str], references: list[str]) -> float:
    """sacrebleu's corpus-level chrF (0..100; character n-gram F-score, default settings)."""
    import sacrebleu

    return float(sacrebleu.corpus_chrf(generated, [references]).score)


def generation_metrics(handler, rows: list[dict], model, tokenizer, device, *, max_new_tokens: int,
                       batch_size: int = 16) -> dict:
    """Generate an answer for every row (`reference_rows` output) and score it.

    Prompts are sorted by length and generated `batch_size` at a time through
    `handler.generate_batch` (one `model.generate` call per batch, left-padded); a handler with
    only `generate` is called one prompt at a time, and its eos_rate is None (unknown).

    Returns exact_match (share 0..1, stripped string equality), chrf (0..100), eos_rate (share
    of answers that ended with EOS or a stop string before `max_new_tokens`), n (rows), seconds
    (wall time of generation), and samples: [{"prompt" (as text), "reference", "generated"}]
    for every row, in the rows' order. With no rows, the metrics are None.
    A progress bar over the prompts is shown on a terminal (tqdm, stderr).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ConfigError(f"batch_size={batch_size!r} must be a positive integer, e.g. 16.")
    n = len(rows)
    if n == 0:
        return {"exact_match": None, "chrf": None, "eos_rate": None, "n": 0, "seconds": 0.0,
                "samples": []}
    prompts = [r["prompt"] for r in rows]
    references = [r["reference"] for r in rows]
    generated: list[str] = [""] * n
    finished: list[bool | None] = [None] * n
    from tqdm.auto import tqdm

    bar = tqdm(total=n, desc="Evaluating (generation)", unit="prompt", leave=False, disable=None)
    start = time.perf_counter()
    with bar:
        if hasattr(handler, "generate_batch"):
            # similar lengths together: less padding, and short batches end sooner
            order = sorted(range(n), key=lambda i: len(prompt_as_text(prompts[i])))
            for k in range(0, n, batch_size):
                chunk = order[k:k + batch_size]
                outs = handler.generate_batch([prompts[i] for i in chunk], model, tokenizer, device,
                                              max_new_tokens)
                for i, g in zip(chunk, outs):
                    generated[i], finished[i] = g.text, g.finished_with_eos
                bar.update(len(chunk))
        else:
            for i, p in enumerate(prompts):
                generated[i] = handler.generate(p, model, tokenizer, device, max_new_tokens)
                bar.update(1)
    seconds = time.perf_counter() - start
    known = [f for f in finished if f is not None]
    return {
        "exact_match": exact_match(generated, references),
        "chrf": chrf(generated, references),
        "eos_rate": sum(known) / len(known) if len(known) == n else None,
        "n": n,
        "seconds": seconds,
        "samples": [{"prompt": prompt_as_text(p), "reference": r, "generated": g}
                    for p, r, g in zip(prompts, references, generated)],
    }


# -- loss ------------------------------------------------------------------------------------
_MODEL_COLUMNS = ("input_ids", "attention_mask", "labels")


def loss_metrics(model, tokenized_dataset, collator, *, batch_size: int = 8) -> dict:
    """Mean loss and perplexity of `model` on a tokenized eval set.

    tokenized_dataset: rows with input_ids, attention_mask and labels (-100 where no loss is
    wanted), as the preprocessor makes them; collator: pads a list of rows into tensors (e.g.
    `trainer_config.default_collator(...)`; for seq2seq it should also build decoder_input_ids).

    Weighting: every labelled token counts once across the whole set, i.e. loss = (sum of
    per-token cross-entropies) / (number of labelled tokens); an example with a long answer
    weighs more than one with a short answer. (The Trainer's `eval_loss` averages per-batch means
    instead, so the two can differ slightly.) Causal models predict token t+1 from position t;
    a label at position 0 is never predicted and not counted. perplexity = exp(loss).

    The model runs in eval mode under `torch.inference_mode()`; its training mode is restored.
    Returns {"loss", "perplexity", "tokens" (labelled tokens counted), "n" (rows)}.
    """
    from ..model.facts import is_encoder_decoder

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ConfigError(f"batch_size={batch_size!r} must be a positive integer, e.g. 8.")
    columns = getattr(tokenized_dataset, "column_names", None)
    if columns is not None and not {"input_ids", "labels"} <= set(columns):
        raise ConfigError(f"loss_metrics needs a tokenized dataset with input_ids and labels; got "
                          f"columns {columns}.")
    enc_dec = is_encoder_decoder(model.config)
    target = _input_device(model, "cpu")
    total, count, n = 0.0, 0, len(tokenized_dataset)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for k in range(0, n, batch_size):
                rows = [tokenized_dataset[i] for i in range(k, min(k + batch_size, n))]
                features = [{c: r[c] for c in _MODEL_COLUMNS if c in r} for r in rows]
                batch = {key: value.to(target) for key, value in collator(features).items()
                         if isinstance(value, torch.Tensor)}
                labels = batch.pop("labels")
                if enc_dec:
                    if "decoder_input_ids" not in batch:
                        batch["labels"] = labels  # the model shifts them into decoder inputs
                    logits, gold = model(**batch).logits, labels
                else:
                    logits, gold = model(**batch).logits[:, :-1], labels[:, 1:]
                for row_logits, row_gold in zip(logits, gold):  # one row at a time: fp32 upcast stays small
                    keep = row_gold != IGNORE_INDEX
                    if keep.any():
                        total += torch.nn.functional.cross_entropy(
                            row_logits[keep].float(), row_gold[keep], reduction="sum").item()
                        count += int(keep.sum())
    finally:
        model.train(was_training)
    if count == 0:
        raise ConfigError("The eval set has no labelled tokens (every label is -100); nothing to "
                          "measure. Check that rows have answers.")
    loss = total / count
    try:
        perplexity = math.exp(loss)
    except OverflowError:
        perplexity = float("inf")
    return {"loss": loss, "perplexity": perplexity, "tokens": count, "n": n}


# -- one split, as FineTuner.evaluate uses it ---------------------------------------------------
def default_max_new_tokens(rows: list[dict], tokenizer, cap: int) -> int:
    """A new-token limit for scoring `rows`: twice the longest reference plus 8 tokens, at least
    16 and at most `cap`. An answer longer than that cannot match its reference, and a tight
    limit keeps a rambling model from costing `cap` tokens per row; eos_rate still counts such
    an answer as not finished."""
    longest = max((len(tokenizer(r["reference"], add_special_tokens=False)["input_ids"]) for r in rows),
                  default=0)
    return max(1, min(cap, max(16, 2 * longest + 8)))


def evaluate_split(ft, raw, tokenized, *, chat_format, max_new_tokens: int | None = None,
                   batch_size: int = 16, collator=None) -> dict:
    """Loss/perplexity on `tokenized` and generation metrics on the rows of `raw` that have a
    reference, for a FineTuner-like object `ft` (model, tokenizer, device, inference_handler,
    preprocessor, max_length); prompts are shaped as `chat_format` (the run's) renders them.

    raw: the split as given (user columns; the preprocessor's column_map is applied here);
    tokenized: the same split through the preprocessor, or None to skip the loss;
    max_new_tokens: None -> `default_max_new_tokens(rows, tokenizer, ft.max_length)`;
    collator: None -> dynamic padding as in training (`DataCollatorForSeq2Seq`, labels padded
    with -100; the same as `trainer_config.default_collator(..., on_cpu=True)`).

    Returns {"loss", "perplexity", "loss_tokens", "loss_rows"} (None without `tokenized`) and
    generation_metrics' {"exact_match", "chrf", "eos_rate", "n", "seconds", "samples"} plus
    "max_new_tokens" (None/0 where the data has no references, e.g. plain text).
    """
    from ..data.formats import detect_format
    from ..errors import DatasetError
    from ..model.facts import is_encoder_decoder

    model, tokenizer = ft.model, ft.tokenizer
    enc_dec = is_encoder_decoder(model.config)
    out: dict = {"loss": None, "perplexity": None, "loss_tokens": None, "loss_rows": None}
    if tokenized is not None and len(tokenized):
        if collator is None:
            from transformers import DataCollatorForSeq2Seq

            collator = DataCollatorForSeq2Seq(tokenizer, model=model if enc_dec else None,
                                              label_pad_token_id=IGNORE_INDEX)
        lm = loss_metrics(model, tokenized, collator)
        out.update(loss=lm["loss"], perplexity=lm["perplexity"], loss_tokens=lm["tokens"],
                   loss_rows=lm["n"])

    preprocessor = getattr(ft, "preprocessor", None)
    column_map = {k: v for k, v in (getattr(preprocessor, "column_map", None) or {}).items()
                  if k in raw.column_names}
    if column_map:
        raw = raw.rename_columns(column_map)
    try:
        fmt = detect_format(raw.column_names, getattr(preprocessor, "format", "auto") or "auto")
    except DatasetError:  # a custom preprocessor's own columns: no references we can read
        fmt = "text"
    rows = reference_rows(raw, fmt, chat_format.renders(fmt))
    if max_new_tokens is None:
        max_new_tokens = default_max_new_tokens(rows, tokenizer, ft.max_length)
    out.update(generation_metrics(ft.inference_handler, rows, model, tokenizer, ft.device,
                                  max_new_tokens=max_new_tokens, batch_size=batch_size))
    out["max_new_tokens"] = max_new_tokens if rows else None
    return out
