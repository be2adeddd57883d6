"""Greedy answers kept on disk, so a second run on the same base model does not ask again.

Before training, every default run asks its model two fixed lists of prompts: the self-replay
prompts (`data/replay.py`) and the retention probe (`infer/retention.py`), both greedy, so both
deterministic for a given model, template and prompt list. On a CPU that is most of the time
before the first optimizer step (about 40 s of the embedded model's ~50 s). This module keeps
those answers in the package's cache folder (`model.embedded.cache_dir()`, `answers/`), keyed by
what decides them:

- the model's weights as they are now, by a fingerprint (every parameter's float64 sum and sum of
  squares, its dtype and shape; ~0.1 s for 135M parameters): a model changed in memory (trained,
  merged, another adapter) gets another key, never another model's answers;
- the tokenizer's chat template and special tokens, the system prompt and how prompts are wrapped
  (`ChatFormat`);
- the prompts, the new-token limit and what is asked (`kind`).

No library does this (datasets caches map() results by the function's code, not a model's
outputs). `FINETUNING_SUITE_ANSWER_CACHE=0` turns it off; a cache that cannot be written is
skipped with a debug line (a cache must never stop a run).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Callable, Sequence

logger = logging.getLogger(__name__)

VERSION = 1  # bump when what is stored or how it is keyed changes


def enabled() -> bool:
    return os.environ.get("FINETUNING_SUITE_ANSWER_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def model_fingerprint(model) -> str:
    """A hash of every parameter's values (float64 sum and sum of squares), dtype and shape."""
    import torch

    h = hashlib.sha256(type(model).__name__.encode())
    with torch.no_grad():
        for name, p in model.named_parameters():
            data = p.detach()
            if not data.is_floating_point():
                data = data.to(torch.float64)
            h.update(f"{name}|{tuple(data.shape)}|{p.dtype}|{float(data.sum(dtype=torch.float64))!r}|"
                     f"{float((data.to(torch.float64) ** 2).sum())!r}".encode())
    return h.hexdigest()


def _key(kind: str, model, tokenizer, chat_format, prompts: Sequence, max_new_tokens: int) -> str:
    fmt = {k: getattr(chat_format, k, None) for k in ("chat", "wrap_text", "system_prompt", "template")}
    payload = json.dumps({"v": VERSION, "kind": kind, "model": model_fingerprint(model),
                          "template": getattr(tokenizer, "chat_template", None), "format": repr(fmt),
                          "special": [tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token],
                          "prompts": list(prompts), "max_new_tokens": max_new_tokens},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def cached_answers(kind: str, model, tokenizer, chat_format, prompts: Sequence, max_new_tokens: int,
                   compute: Callable[[Sequence], list]) -> list:
    """`compute(prompts)` (a list of answers: strings or None), or the same list from the cache
    when this model, template and prompt list were asked before."""
    if not enabled() or not prompts:
        return compute(prompts)
    from ..model.embedded import cache_dir

    path = cache_dir() / "answers" / f"{kind}-{_key(kind, model, tokenizer, chat_format, prompts, max_new_tokens)}.json"
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(stored, list) and len(stored) == len(prompts):
            logger.info("%s: %d answers of this model from the cache (%s).", kind, len(stored), path.parent)
            return stored
    except (OSError, ValueError):
        pass
    answers = compute(prompts)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(list(answers)), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        logger.debug("Answer cache not written (%s).", exc)
    return answers
