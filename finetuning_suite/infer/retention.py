"""Did the model forget? General prompts with checkable answers, asked before and after training.

The prompts are `data/retention/retention.{dev,test}.jsonl` (written and frozen before anything
was tuned; `scripts/make_retention_data.py`): knowledge, arithmetic, words, format-following,
translation, short multi-turn follow-ups, everyday requests, each with a checker
(`infer.checks`). The *dev* half may be tuned on; the *test* half is for reporting only.

- `answer(items, ...)`: the model's greedy replies, batched, rendered with the run's chat format;
- `score(items, replies)`: which replies pass their checker;
- `retention(before, after)`: of the items the model got right before, how many it still gets
  right ("kept K of N"), and which it lost: the base model's right answers are the denominator.

Every training run on a chat model runs the probe (`PROBE_ITEMS` items of the dev half,
~30 s for the 135M embedded model on a CPU) before and after training and says whether it
forgot (`FineTuner.train`, `retention_probe=False` to skip it).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .checks import check

RETENTION_DIR = Path(__file__).resolve().parent.parent / "data" / "retention"
SPLITS = ("dev", "test")
PROBE_ITEMS = 40           # the probe's slice of the dev half (its first items, a fixed order)
PROBE_MAX_NEW_TOKENS = 64  # replies are short; a checker reads the first sentences
KEPT_WARNING = 0.9         # below this share kept, the run warns and says what to try


def load_items(split: str = "dev") -> list[dict]:
    """The retention items of one half, in file order."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: use one of {SPLITS}.")
    path = RETENTION_DIR / f"retention.{split}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def probe_items(n: int = PROBE_ITEMS) -> list[dict]:
    """The probe's items: the first `n` of the dev half (the test half is never probed)."""
    return load_items("dev")[:n]


def answer(items: list[dict], model, tokenizer, device: str, chat_format, *,
           max_new_tokens: int = PROBE_MAX_NEW_TOKENS, batch_size: int = 16) -> list[str]:
    """Greedy replies to every item's conversation, batched (longest prompts together)."""
    from .generation import DefaultInferenceHandler

    handler = DefaultInferenceHandler(chat_format=chat_format)
    prompts = [item["messages"] for item in items]
    order = sorted(range(len(prompts)), key=lambda i: sum(len(m["content"]) for m in prompts[i]))
    replies = [""] * len(prompts)
    for k in range(0, len(order), batch_size):
        chunk = order[k:k + batch_size]
        outs = handler.generate_batch([prompts[i] for i in chunk], model, tokenizer, device, max_new_tokens)
        for i, g in zip(chunk, outs):
            replies[i] = g.text
    return replies


def score(items: list[dict], replies: list[str]) -> list[bool]:
    return [check(reply, item["check"]) for item, reply in zip(items, replies)]


@dataclass
class Retention:
    """Of the `asked` items, the `base_right` ones the model answered right before training, and
    how many of those it still answers right (`kept`); `lost` and `gained` name the items."""

    asked: int
    base_right: int
    kept: int
    lost: list[dict] = field(default_factory=list)   # {"id", "prompt", "before", "after"}
    gained: int = 0

    @property
    def share(self) -> float | None:
        return self.kept / self.base_right if self.base_right else None

    def line(self) -> str:
        """One sentence for the end of a run."""
        if not self.base_right:
            return (f"the model answered none of the {self.asked} general probe prompts right "
                    "before training, so there was nothing to keep")
        lost = "; lost: " + ", ".join(f"{item['prompt']!r}" for item in self.lost[:5]) if self.lost else ""
        more = f" (+{len(self.lost) - 5} more)" if len(self.lost) > 5 else ""
        return (f"kept {self.kept} of {self.base_right} general answers it knew ({self.asked} prompts "
                f"asked){lost}{more}")

    def warning(self) -> str | None:
        """The warning and its hint when too much was lost, else None."""
        if self.share is None or self.share >= KEPT_WARNING:
            return None
        return (f"The model forgot general answers it knew ({self.line()}). Try a lower "
                "learning_rate (e.g. half), fewer epochs (num_train_epochs), or keep "
                "self_replay on with more rows (self_replay_rows).")

    def to_dict(self) -> dict:
        return {"asked": self.asked, "base_right": self.base_right, "kept": self.kept,
                "share": self.share, "gained": self.gained, "lost": self.lost, "line": self.line(),
                "warning": self.warning()}


def retention(items: list[dict], before: list[str], after: list[str]) -> Retention:
    """Compare replies before and after training (see the module docstring)."""
    right_before, right_after = score(items, before), score(items, after)
    lost = [{"id": item["id"], "prompt": item["messages"][-1]["content"], "before": b, "after": a}
            for item, b, a, rb, ra in zip(items, before, after, right_before, right_after) if rb and not ra]
    return Retention(asked=len(items), base_right=sum(right_before),
                     kept=sum(rb and ra for rb, ra in zip(right_before, right_after)), lost=lost,
                     gained=sum(ra and not rb for rb, ra in zip(right_before, right_after)))
