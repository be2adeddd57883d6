"""Training defaults chosen from the method and the dataset's size (issue 6).

The old fixed defaults (learning rate 2e-4, batch 8, LoRA r=16/alpha=32 on q_proj/v_proj, 3%
warmup, linear decay, 3 epochs) learn nothing from a small dataset: on a dozen made-up facts,
10 epochs gave 20 optimizer steps, loss 7.9 -> 6.1 and 0/12 facts learned. The two failure modes
users hit are (1) too few, too small updates, and (2) updates big enough to learn that also
overwrite what the model knew ("What is the capital of France?" no longer answered "Paris").

`choose_defaults(method, n_examples)` fixes both with one rule:

* **Enough updates.** Batch 4 below 200 examples, else 8 (no gradient accumulation: on a CPU
  a bigger batch only makes each step slower). When the caller gives no epoch count we pick
  enough epochs for about `TARGET_PASSES` example passes (80 steps of batch 4), between 1 and
  `MAX_EPOCHS`, and never more than `MAX_EXAMPLE_PASSES` example passes (the time budget: about 5 minutes on two
  CPU cores for the embedded 135M model).
* **Updates big enough.** LoRA on every linear layer (`"all-linear"`: attention *and* MLP; the
  MLP holds most of a transformer's factual memory, q/v alone cannot store new facts quickly),
  r=16, alpha=32, learning rate 1e-3 (5e-4 from 500 examples on, where there are many more
  steps), 5% warmup then cosine decay to zero (the decay lets the last steps settle instead of
  bouncing at the peak rate). Full fine-tuning moves every weight, so its rate is ~50x lower.
* **Keep what the model knew: self-replay.** Before training, the base model answers a fixed
  list of unrelated general prompts (`finetuning_suite.data.replay.REPLAY_PROMPTS`); those
  answers are appended to the training rows (`replay_rows` of them). Their loss starts near its
  floor, so they cost little learning but pull back any drift of the general behaviour.

Measured on the embedded SmolLM2-135M-Instruct, fp32, CPU (see
`bench/results/defaults_experiments.md` for every run, settings and wall times; the 2-core
machine was shared with other jobs, so wall times are upper bounds). LoRA all-linear r=16
alpha=32, cosine, 5% warmup; "kept" = general questions still answered right (of 12):

    old defaults, 12 facts, 10 epochs (issue 6)          0/12 learned, Paris kept
    lr 1e-3, batch 2, no replay (issue 6)                12/12 learned, Paris lost
    lr 1e-3, batch 4, 10 ep, 16 replay, 12 facts (issue) 12/12 learned, Paris kept
    E1 facts (72 rows) +12 replay, lr 1e-3, b4, 4 ep     held-out 91.7%, EOS 100%, kept 6/12
    E2 facts (72 rows) +29 replay, lr 1e-3, b4, 3 ep     held-out 62.5%, EOS 100%, kept 9/12
    E3 extract_fields (300) +29 replay, lr 1e-3, b8, 1 ep  held-out 100%, EOS 100%, kept 11/12

More replay keeps more and fewer passes learn less: the rule's 72-row point (4 epochs, 24
replay rows) sits between E1 and E2 and is an interpolation, not a measured optimum. The
issue's targets (>= 95% held-out *and* every general answer kept) were NOT met by any run here.

Everything returned is a default: values the caller sets explicitly (their own trainer config
fields, LoRA arguments, `num_train_epochs`) win. Pure function, no torch import.
"""
from __future__ import annotations

import math

METHODS = ("lora", "qlora", "full")

TARGET_PASSES = 320        # example passes we aim for when choosing epochs (80 steps of 4)
MAX_EPOCHS = 10            # a dozen rows get 10 epochs; more rarely helps and costs time
MAX_EXAMPLE_PASSES = 1200  # epochs * rows cap: ~5 min on 2 CPU cores for a 135M model
SMALL_DATASET = 200        # below: batch 4, above: batch 8
LARGE_DATASET = 500        # from here: half the LoRA learning rate
REPLAY_MIN, REPLAY_MAX = 16, 32
UNKNOWN_SIZE = 200         # assumed when choose_defaults() is asked before the data is loaded

LORA_LR = 1e-3
LORA_LR_LARGE = 5e-4
FULL_LR = 2e-5


def replay_count(n_examples: int) -> int:
    """Self-replay rows for `n_examples` training rows: a third of the data, at least
    `REPLAY_MIN` (small sets drift most), at most `REPLAY_MAX` (the embedded model ends 29 of
    the 40 `REPLAY_PROMPTS` within 64 new tokens, so ~30 rows is what one model can give)."""
    return max(REPLAY_MIN, min(REPLAY_MAX, n_examples // 3))


def choose_defaults(method: str, n_examples: int | None, num_train_epochs: float | None = None,
                    replay: bool = True) -> dict:
    """The default training settings for `method` ("lora", "qlora" or "full") on a dataset of
    `n_examples` training rows (before replay rows are added); None when the size is not known
    yet: then the values for a mid-sized set (`UNKNOWN_SIZE` rows) are returned.

    num_train_epochs: the caller's epoch count, kept as given; None lets the rule choose.
    replay: False turns self-replay off (`replay_rows` = 0).

    Returns a dict with:
      training: TrainingArguments fields (learning_rate, per_device_train_batch_size,
          gradient_accumulation_steps, warmup_steps (a float < 1 is a ratio, as in
          TrainingArguments), lr_scheduler_type, weight_decay, num_train_epochs).
      lora: {target_modules, r, alpha, dropout, use_rslora} for LoRA/QLoRA; None for "full".
      replay_rows: how many self-replay rows to append (0: none).
      rule / summary: one line for the log / run config (the same text).
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}: use one of {METHODS}.")
    if n_examples is None:
        n_examples = UNKNOWN_SIZE
    if isinstance(n_examples, bool) or not isinstance(n_examples, int) or n_examples < 1:
        raise ValueError(f"n_examples={n_examples!r} must be a positive integer or None.")
    n_replay = replay_count(n_examples) if replay else 0
    rows = n_examples + n_replay
    batch = 4 if n_examples < SMALL_DATASET else 8
    if num_train_epochs is None:
        epochs = max(1, min(MAX_EPOCHS, math.ceil(TARGET_PASSES / rows), MAX_EXAMPLE_PASSES // rows))
    else:
        epochs = num_train_epochs
    if method == "full":
        lr, lora = FULL_LR, None
    else:
        lr = LORA_LR if n_examples < LARGE_DATASET else LORA_LR_LARGE
        lora = {"target_modules": "all-linear", "r": 16, "alpha": 32, "dropout": 0.05,
                "use_rslora": False}
    training = {
        "learning_rate": lr,
        "per_device_train_batch_size": batch,
        "gradient_accumulation_steps": 1,
        "warmup_steps": 0.05,
        "lr_scheduler_type": "cosine",
        "weight_decay": 0.0,
        "num_train_epochs": epochs,
    }
    if method == "qlora":  # chosen to save memory: keep activations small too
        training.update(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False})
    summary = (f"defaults for {method} on {n_examples} examples: lr {lr:g}, batch {batch}, "
               f"{epochs:g} epochs, cosine, 5% warmup"
               + (", LoRA all-linear r=16 alpha=32" if lora else ", all weights")
               + (f", +{n_replay} self-replay rows" if n_replay else ", no replay")
               + (", gradient checkpointing" if method == "qlora" else ""))
    return {"method": method, "n_examples": n_examples, "training": training, "lora": lora,
            "replay_rows": n_replay, "rule": summary, "summary": summary}
