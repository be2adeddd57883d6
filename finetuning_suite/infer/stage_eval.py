"""Evaluation of preference and reward training, before and after, on held-out rows.

- `dpo`, `orpo` (prompt + chosen + rejected): the log-probability the model gives each answer
  (summed over its tokens, EOS included). Before training these are the reference's. After:
  `reward_accuracy`, the share of rows where the model prefers chosen over rejected by more
  than the reference did (DPO's implicit reward margin above zero), and `reward_margin`, that
  margin's mean (beta x the log-ratio difference); `prefers_chosen`, the share where the model's
  own log-probability of chosen beats rejected's, before and after.
- `kto` (prompt + completion + label): `reward_accuracy`, the share of rows whose implicit reward
  (beta x log-ratio to the reference) has the label's sign.
- `grpo` (prompts): one greedy answer per prompt, scored by every reward function: the mean per
  function and the share of answers at the best total reward (`at_max`: the functions' own
  maxima when they declare one, as the built-ins do, else the best total seen).

Every evaluation also keeps samples (prompt, reference answer or "", generated), shown side by
side with the after-training ones in the report. Rows are as `data.preference.to_trl_rows` made
them, rendered with the run's chat format.
"""
from __future__ import annotations

import math

import torch

from ..train.rewards import completion_text

SAMPLES = 10


def _prompt_ids(prompt, tokenizer, chat_format) -> list[int]:
    text, templated = chat_format.prompt_text(prompt, tokenizer)
    return tokenizer(text, add_special_tokens=not templated)["input_ids"]


def answer_logp(model, tokenizer, chat_format, prompt, answer) -> float:
    """log p(answer + EOS | prompt), summed over the answer's tokens."""
    prompt_ids = _prompt_ids(prompt, tokenizer, chat_format)
    answer_ids = tokenizer(completion_text(answer), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([prompt_ids + answer_ids], device=model.get_input_embeddings().weight.device)
    with torch.inference_mode():
        logp = torch.log_softmax(model(input_ids=ids, use_cache=False).logits[0, :-1].float(), dim=-1)
    positions = torch.arange(len(prompt_ids) - 1, ids.shape[1] - 1, device=ids.device)
    return float(logp[positions, ids[0, len(prompt_ids):]].sum())


def _logps(model, tokenizer, chat_format, rows, keys) -> list[dict]:
    was = model.training
    model.eval()
    try:
        return [{k: answer_logp(model, tokenizer, chat_format, row["prompt"], row[k]) for k in keys}
                for row in rows]
    finally:
        model.train(was)


def _samples(ft, rows, reference_key: str | None, max_new_tokens: int) -> list[dict]:
    shown = rows[:SAMPLES]
    outs = ft.inference_handler.generate_batch([r["prompt"] for r in shown], ft.model, ft.tokenizer,
                                               ft.device, max_new_tokens) \
        if hasattr(ft.inference_handler, "generate_batch") else None
    texts = [o.text for o in outs] if outs is not None else \
        [ft.inference_handler.generate(r["prompt"], ft.model, ft.tokenizer, ft.device, max_new_tokens) for r in shown]
    return [{"prompt": completion_text(r["prompt"]), "reference": completion_text(r[reference_key]) if reference_key else "",
             "generated": t} for r, t in zip(shown, texts)]


def evaluate_stage(ft, stage: str, rows: list[dict], *, reference: dict | None = None, beta: float = 0.1,
                   reward_funcs=None, max_new_tokens: int = 64) -> dict:
    """The stage's metrics on `rows` (see the module docstring). `reference`: the `before`
    result of the same rows, which holds the reference log-probabilities."""
    model, tokenizer, fmt = ft.model, ft.tokenizer, ft.chat_format
    out: dict = {"n": len(rows), "stage": stage}
    if stage in ("dpo", "orpo"):
        logps = _logps(model, tokenizer, fmt, rows, ("chosen", "rejected"))
        out["logps"] = logps
        out["prefers_chosen"] = sum(p["chosen"] > p["rejected"] for p in logps) / len(rows)
        if reference is not None:
            deltas = [(p["chosen"] - r["chosen"]) - (p["rejected"] - r["rejected"])
                      for p, r in zip(logps, reference["logps"])]
            out["reward_accuracy"] = sum(d > 0 for d in deltas) / len(rows)
            out["reward_margin"] = beta * sum(deltas) / len(rows)
        out["samples"] = _samples(ft, rows, "chosen", max_new_tokens)
    elif stage == "kto":
        logps = _logps(model, tokenizer, fmt, rows, ("completion",))
        out["logps"] = logps
        if reference is not None:
            rewards = [beta * (p["completion"] - r["completion"]) for p, r in zip(logps, reference["logps"])]
            out["reward_accuracy"] = sum((w > 0) == bool(row["label"]) for w, row in zip(rewards, rows)) / len(rows)
            out["reward_margin"] = sum(w if row["label"] else -w for w, row in zip(rewards, rows)) / len(rows)
        out["samples"] = _samples(ft, [r for r in rows if r["label"]] or rows, "completion", max_new_tokens)
    elif stage == "grpo":
        prompts = [r["prompt"] for r in rows]
        outs = ft.inference_handler.generate_batch(prompts, model, tokenizer, ft.device, max_new_tokens)
        completions = [[{"role": "assistant", "content": o.text}] if isinstance(p, list) else o.text
                       for p, o in zip(prompts, outs)]
        columns = {k: [r.get(k) for r in rows] for k in rows[0] if k != "prompt"}
        totals = [0.0] * len(rows)
        per_function = {}
        for function in reward_funcs or []:
            values = function(prompts=prompts, completions=completions, **columns)
            clean = [0.0 if v is None or not math.isfinite(v) else v for v in values]
            per_function[function.__name__] = sum(clean) / len(clean)
            totals = [t + v for t, v in zip(totals, clean)]
        out["rewards"] = per_function
        out["reward_mean"] = sum(totals) / len(totals)
        out["totals"] = totals
        maxima = [getattr(f, "max_reward", None) for f in reward_funcs or []]
        # the best total: the functions' own maxima when they declare them (the built-ins: 1.0),
        # else the best seen before or after training
        best = sum(maxima) if maxima and None not in maxima else \
            max(totals + ((reference or {}).get("totals") or []))
        out["at_max"] = sum(t >= best - 1e-9 for t in totals) / len(totals)
        out["samples"] = [{"prompt": completion_text(p), "reference": "", "generated": o.text}
                          for p, o in zip(prompts[:SAMPLES], outs[:SAMPLES])]
    return out
