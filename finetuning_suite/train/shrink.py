"""Keep what the model knew: after LoRA training, shrink the adapter's update as far as the
training answers allow (issue 17).

A LoRA adapter adds `scale x B @ A` to each adapted weight. Training a small set for many epochs
(a dozen facts, 10 epochs) overshoots: the answers are learned with a wide margin, and the same
update moves the model's other answers. Scaling the update down moves the model back towards
the base along the line between the two, and the answers learned with margin survive a good
part of the way. Measured on the retention set's dev half (facts12, the defaults, one run, the
frozen test half not read; `bench/results/retention_experiments.md`): scale 1.0 kept 27 of 51
base-right items, 0.8 kept 34, 0.65 kept 39 with all 12 facts still given, 0.5 kept 41 but gave
only 7 facts. A lower learning rate is not the same: 3e-4 instead of 1e-3 kept 38 but learned 5.

So `shrink_adapter` chooses the scale from the run's own training rows, nothing held out:

1. up to `MAX_ROWS` training rows (the user's, not self-replay rows), evenly spaced; each row's
   prompt is its tokens before the first labelled one, its answer the first labelled span (at
   most `MAX_ANSWER_TOKENS` tokens);
2. greedy answers at full scale: the rows whose answer comes back token for token are the ones
   the adapter learned (none: nothing to check against, the adapter is left as trained);
3. bisection between `MIN_SCALE` and 1.0 (`STEPS` halvings, so to about 0.04): the smallest
   scale at which every learned row still comes back exactly;
4. the scale is folded into the adapter's B matrices, so the saved adapter is a plain PEFT
   adapter (and merged or GGUF exports carry the same update).

What it costs: `STEPS + 1` batched greedy generations of at most 32 short answers (seconds for a
135M model on a CPU). Left alone: full fine-tuning (no adapter to scale), DoRA adapters (their
magnitude vector is trained separately), encoder-decoders, runs over several processes (the
weights are sharded or replicated per process), preference and reward stages (their measure is
not a reproduced answer), and rows trained on their inputs (no prompt/answer boundary).
`adapter_shrink=False` keeps the adapter as trained.

Written here, not taken from a library: PEFT sets an adapter's scale (`LoraLayer.set_scale`,
used here) but nothing chooses the scale from the training data.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

logger = logging.getLogger(__name__)

MAX_ROWS = 32
MAX_ANSWER_TOKENS = 48
MIN_SCALE = 0.3
STEPS = 4
IGNORE = -100


@dataclass
class ShrinkResult:
    scale: float                  # the scale folded into the adapter (1.0: left as trained)
    checked: int                  # training rows asked
    learned: int                  # of them, answered token for token at full scale
    tried: dict = field(default_factory=dict)   # scale -> learned rows still given
    reason: str = ""

    def to_dict(self) -> dict:
        return {**asdict(self), "tried": {f"{k:.3g}": v for k, v in sorted(self.tried.items())},
                "line": self.line()}

    def line(self) -> str:
        if self.scale == 1.0:
            return f"Adapter kept at full scale: {self.reason}."
        return (f"Adapter scaled to {self.scale:.2f}: the {self.learned} training answers it gave at full "
                f"scale (of {self.checked} checked) are still given, and the smaller update keeps more "
                "of what the model knew (adapter_shrink=False keeps 1.0).")


def answer_rows(dataset, max_rows: int = MAX_ROWS) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids) of up to `max_rows` evenly spaced rows: the tokens before the
    first labelled one, and the first labelled span (at most MAX_ANSWER_TOKENS)."""
    n = len(dataset)
    if not n or "labels" not in dataset.column_names:
        return []
    step = max(1, -(-n // max_rows))  # ceil: the picks spread over the whole set
    out = []
    for i in range(0, n, step):
        ids, labels = dataset[i]["input_ids"], dataset[i]["labels"]
        start = next((j for j, label in enumerate(labels) if label != IGNORE), None)
        if not start:  # no label, or labelled from the first token (trained on its inputs)
            continue
        end = start
        while end < len(labels) and labels[end] != IGNORE and end - start < MAX_ANSWER_TOKENS:
            end += 1
        out.append((list(ids[:start]), list(ids[start:end])))
        if len(out) == max_rows:
            break
    return out


def _lora_layers(model):
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def _set_scale(layers, scale: float) -> None:
    """Every adapter of every layer at `scale` x its configured alpha/r (PEFT's `set_scale`)."""
    for layer in layers:
        for name in list(layer.scaling):
            layer.set_scale(name, scale)


def _given(model, tokenizer, rows, device) -> list[bool]:
    """Whether each row's greedy answer starts with its trained answer, token for token."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(p) for p, _ in rows)
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p, _ in rows], device=device)
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p, _ in rows], device=device)
    new = max(len(a) for _, a in rows)
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=new,
                             do_sample=False, pad_token_id=pad, num_beams=1)
    return [out[i, width:width + len(a)].tolist() == a for i, (_, a) in enumerate(rows)]


def shrink_adapter(model, tokenizer, dataset, device, *, min_scale: float = MIN_SCALE,
                   steps: int = STEPS) -> ShrinkResult:
    """Scale the trained LoRA update of `model` down to the smallest scale (to about 0.04 by
    default) at which the answers it learned of `dataset`'s rows are still given; see the module
    docstring. The model is left in eval mode."""
    layers = _lora_layers(model)
    if not layers:
        return ShrinkResult(1.0, 0, 0, reason="no LoRA layers")
    if any(getattr(layer, "use_dora", {}) and any(layer.use_dora.values()) for layer in layers):
        return ShrinkResult(1.0, 0, 0, reason="a DoRA adapter is not shrunk")
    rows = answer_rows(dataset)
    if not rows:
        return ShrinkResult(1.0, 0, 0, reason="no training row has a prompt and a labelled answer to check")
    model.eval()
    try:
        at_full = _given(model, tokenizer, rows, device)
        learned = [row for row, ok in zip(rows, at_full) if ok]
        result = ShrinkResult(1.0, len(rows), len(learned), {1.0: len(learned)})
        if not learned:
            result.reason = f"none of the {len(rows)} training answers checked comes back token for token"
            return result
        low, high = min_scale, 1.0  # high: the smallest scale known to keep every learned answer
        for _ in range(steps):
            mid = round((low + high) / 2, 4)
            _set_scale(layers, mid)
            kept = sum(_given(model, tokenizer, learned, device))
            result.tried[mid] = kept
            if kept == len(learned):
                high = mid
            else:
                low = mid
        result.scale = high
        if high == 1.0:
            result.reason = "a smaller scale lost some of the training answers"
    finally:
        _set_scale(layers, 1.0)
    if result.scale < 1.0:
        for layer in layers:
            for name in layer.scaling:
                if name in layer.lora_B:
                    layer.lora_B[name].weight.data.mul_(result.scale)
    return result
