"""The meter: what a training run measures about itself while it runs.

* `RunReportCallback` (a `TrainerCallback`) appends one JSON line per log event to
  `<output_dir>/metrics.jsonl`: step, epoch, elapsed seconds, train loss or eval metrics, learning
  rate, grad norm, tokens/s and, given the FLOPs per token and the machine's peak, MFU.
* MFU, one definition for the meter, the report and `bench/speed.py`: `useful_flops(model,
  tokens=, labelled=, sum_sq=)` counts the training FLOPs of the useful work (every weight on
  every real token, 2 forward + 2 backward, +2 for a trained weight's own gradient; the output
  layer only at labelled positions when the labelled-only loss runs (`train/loss.py`), since
  that is all it computes; attention over each example's own length), and `mfu(flops_per_s,
  peak)` divides by `measure_matmul_peak()` of the precision the matmuls run in
  (`compute_dtype`: bf16 under bf16 autocast, the 4-bit compute dtype for QLoRA).
* `tensorboard_available()`: whether `report_to=["tensorboard"]` can work. transformers 5.x has
  no `TrainingArguments.logging_dir`: its `TensorBoardCallback` writes event files to
  `$TENSORBOARD_LOGGING_DIR` when set, else `<output_dir>/runs/<Mon DD_HH-MM-SS>_<hostname>/`,
  one folder per `train()` call.

Tokens/s comes from `TrainerState.num_input_tokens_seen`, which Trainer fills only with
`TrainingArguments(include_num_input_tokens_seen=...)`: `"non_padding"` counts
`attention_mask.sum()` (real tokens: padding is waste, not useful work). For encoder-decoder
models the count is of encoder input tokens only.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


# -- TensorBoard ------------------------------------------------------------------------------
def tensorboard_available() -> bool:
    """True when `report_to=["tensorboard"]` will work (tensorboard or tensorboardX installed)."""
    from transformers.integrations import is_tensorboard_available

    return bool(is_tensorboard_available())


# -- the metrics.jsonl meter ------------------------------------------------------------------
class RunReportCallback(TrainerCallback):
    """Append one JSON line per Trainer log event to `<output_dir>/metrics.jsonl`.

    Every line has `event` ("start", "train", "eval", "summary" or "log"), `step`, `epoch`,
    `elapsed_s` (wall seconds since `on_train_begin`) and `time` (unix seconds), plus every
    numeric value Trainer logged (`loss`, `learning_rate`, `grad_norm`, `eval_loss`, ...; NaN and
    inf become null). Train lines with token counting on also carry `num_input_tokens_seen`,
    `tokens_per_s` (since the previous train line) and `tokens_per_s_avg` (since the start); the
    summary line at the end carries the run's `tokens_per_s_avg`. Time spent evaluating or
    saving checkpoints is left out of the tokens/s figures. With `flops_per_token` and
    `peak_flops` the same lines get `mfu` and `mfu_avg` = tokens/s * flops_per_token / peak_flops.

    Only the world's rank-0 process writes. Each line is written and the file closed at once, so
    a crash keeps every line logged before it. A fresh run (global step 0 at `on_train_begin`)
    starts the file afresh; a run resumed from a checkpoint appends to it.
    """

    def __init__(self, output_dir: str | os.PathLike, flops_per_token: float | None = None,
                 peak_flops: float | None = None):
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / METRICS_FILE
        self.flops_per_token = float(flops_per_token) if flops_per_token else None
        self.peak_flops = float(peak_flops) if peak_flops else None
        self._t0: float | None = None
        self.first_step_at: float | None = None  # unix time the run's first optimizer step began

    # Timing. `_paused` accumulates seconds spent in evaluation and checkpoint saving: Trainer
    # runs them after `on_step_end` and signals their end with `on_evaluate` / `on_save`.
    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        now = time.perf_counter()
        self._t0 = self._mark = self._last_time = now
        self._paused = self._paused_at_last = 0.0
        self._tokens0 = self._last_tokens = int(state.num_input_tokens_seen or 0)
        self._counting = str(getattr(args, "include_num_input_tokens_seen", "no"))
        if self._counting in ("True", "False"):  # TrainingArguments maps booleans; be safe
            self._counting = "all" if self._counting == "True" else "no"
        if self._counting == "no":
            logger.warning("include_num_input_tokens_seen is off: %s will have no tokens/s or MFU; "
                           "set TrainingArguments(include_num_input_tokens_seen='non_padding').",
                           self.path)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if state.global_step == 0:
            self.path.write_text("", encoding="utf-8")
        self._write({"event": "start", "step": state.global_step, "epoch": state.epoch,
                     "elapsed_s": 0.0, "time": time.time(), "tokens_counted": self._counting,
                     "flops_per_token": self.flops_per_token, "peak_flops": self.peak_flops,
                     "max_steps": state.max_steps})

    def on_step_begin(self, args, state, control, **kwargs):
        if self.first_step_at is None:
            self.first_step_at = time.time()

    def on_step_end(self, args, state, control, **kwargs):
        if self._t0 is not None:
            self._mark = time.perf_counter()

    def on_evaluate(self, args, state, control, **kwargs):
        self._pause_until_now()

    def on_save(self, args, state, control, **kwargs):
        self._pause_until_now()

    def _pause_until_now(self):
        if self._t0 is not None:
            now = time.perf_counter()
            self._paused += now - self._mark
            self._mark = now

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        now = time.perf_counter()
        record: dict[str, Any] = {"event": _event_kind(logs), "step": state.global_step,
                                  "epoch": state.epoch,
                                  "elapsed_s": round(now - self._t0, 3) if self._t0 is not None else None,
                                  "time": time.time()}
        for key, value in logs.items():
            if key not in record and isinstance(value, (int, float, str, bool)):
                record[key] = value
        if self._t0 is not None and self._counting != "no" and record["event"] in ("train", "summary"):
            tokens = int(state.num_input_tokens_seen or 0)
            record["num_input_tokens_seen"] = tokens
            busy_total = (now - self._t0) - self._paused
            if record["event"] == "train":
                busy = (now - self._last_time) - (self._paused - self._paused_at_last)
                record["tokens_per_s"] = _rate(tokens - self._last_tokens, busy)
                self._last_time, self._last_tokens, self._paused_at_last = now, tokens, self._paused
            record["tokens_per_s_avg"] = _rate(tokens - self._tokens0, busy_total)
            if self.flops_per_token and self.peak_flops:
                for rate, key in (("tokens_per_s", "mfu"), ("tokens_per_s_avg", "mfu_avg")):
                    value = mfu(record.get(rate) and record[rate] * self.flops_per_token, self.peak_flops)
                    if value is not None:
                        record[key] = round(value, 5)
        self._write(record)

    def _write(self, record: dict) -> None:
        line = json.dumps({k: _finite(v) for k, v in record.items()}, allow_nan=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8", buffering=1) as fh:
            fh.write(line + "\n")


def _event_kind(logs: dict) -> str:
    if "loss" in logs:
        return "train"
    if "train_runtime" in logs:
        return "summary"
    if any(k.startswith("eval_") for k in logs):
        return "eval"
    return "log"


def _rate(count: float, seconds: float) -> float | None:
    return round(count / seconds, 3) if seconds > 0 and count > 0 else None


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a `metrics.jsonl` (a missing file is empty; a torn last line is skipped)."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            records.append(value)
    return records


# -- FLOPs and the machine's peak ---------------------------------------------------------------
def estimate_flops_per_token(model, *, full: bool | None = None, seq_len: float | None = None,
                             n_layers: int | None = None, attn_dim: int | None = None) -> float:
    """Training FLOPs per token: forward + backward, the usual "model FLOPs" of MFU.

    N counts the parameters that take part in matrix multiplies: every parameter except
    embedding lookups (`nn.Embedding` tables: token, position, T5's relative bias), plus the
    output projection (lm_head) once even when it is tied to the input embedding, since it is a
    real (vocab x hidden) matmul per token. 4-bit bitsandbytes weights count at their unpacked
    size. Per token a weight costs 2 FLOPs forward, 2 backward for the gradient of the
    activations, and 2 more for its own gradient only if it is trained:

    * `full=None` (default): read it off `requires_grad`: 4 * N_frozen + 6 * N_trainable, which
      is ~4N for LoRA/QLoRA (frozen base; the adapters are a fraction of a percent) and 6N for
      full fine-tuning;
    * `full=True`: 6N (the Kaplan/Chinchilla convention); `full=False`: 4N (the LoRA convention).

    Plus attention, which has no weights (PaLM, appendix B): 12 * n_layers * attn_dim * seq_len
    per token (QK^T and AV, 2 FLOPs per multiply-add, forward + 2x backward), for LoRA and full
    alike, counted over the whole T x T score matrix (no halving for the causal mask).
    `seq_len` is the sequence length attention runs over; with varied lengths pass
    `attention_seq_len(lengths)` (= sum(l^2) / sum(l)). Without `seq_len` the attention term
    is left out. `n_layers` and `attn_dim` (heads x head_dim) default to `model.config`;
    encoder-decoder models count encoder + decoder layers (cross-attention and the split of
    tokens between encoder and decoder are not modelled: an approximation).
    """
    embedding_ids = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding)
                     for p in m.parameters(recurse=False)}
    total = trainable = 0
    for p in model.parameters():  # de-duplicates tied parameters
        if id(p) in embedding_ids:
            continue
        n = _numel(p)
        total += n
        trainable += n if p.requires_grad else 0
    out = _output_embeddings(model)
    weight = getattr(out, "weight", None)
    if weight is not None and id(weight) in embedding_ids:  # tied lm_head: still a matmul
        n = _numel(weight)
        total += n
        trainable += n if weight.requires_grad else 0
    if full is None:
        flops = 4.0 * total + 2.0 * trainable
    else:
        flops = (6.0 if full else 4.0) * total
    if seq_len:
        layers, dim = _attention_shape(model)
        layers = n_layers if n_layers is not None else layers
        dim = attn_dim if attn_dim is not None else dim
        flops += 12.0 * layers * dim * float(seq_len)
    return float(flops)


def attention_seq_len(lengths: Iterable[int]) -> float:
    """The `seq_len` that makes `estimate_flops_per_token` exact in total over sequences of these
    lengths: attention costs ~T^2 per sequence, so per token it is sum(l^2) / sum(l)."""
    lengths = [int(x) for x in lengths]
    total = sum(lengths)
    return sum(x * x for x in lengths) / total if total else 0.0


def _numel(p) -> int:
    quant_state = getattr(p, "quant_state", None)  # bitsandbytes Params4bit: packed storage
    shape = getattr(quant_state, "shape", None)
    if shape is not None:
        return int(math.prod(shape))
    return p.numel()


def _output_embeddings(model):
    try:
        return model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None


def _attention_shape(model) -> tuple[int, int]:
    cfg = model.config
    if hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "num_layers", None) or 0
    if getattr(cfg, "is_encoder_decoder", False):
        layers = (getattr(cfg, "encoder_layers", None) or getattr(cfg, "num_layers", None) or layers) + (
            getattr(cfg, "decoder_layers", None) or getattr(cfg, "num_decoder_layers", None) or layers)
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "num_heads", None) or 1
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model", None) or 0
    head_dim = getattr(cfg, "head_dim", None) or getattr(cfg, "d_kv", None) or hidden // heads
    return int(layers), int(heads * head_dim)


@dataclass(frozen=True)
class FlopShape:
    """What `useful_flops` needs of a model: FLOPs per token of the body's weights and of the
    output layer (forward + backward, trained weights included), and the attention shape."""

    body_per_token: float
    head_per_token: float
    layers: int
    attn_dim: int


def flop_shape(model) -> FlopShape:
    """The model's `FlopShape` (weights counted as in `estimate_flops_per_token`)."""
    head = _output_embeddings(model)
    weight = getattr(head, "weight", None)
    everything = estimate_flops_per_token(model)
    head_flops = 0.0
    if weight is not None:
        head_flops = (6.0 if weight.requires_grad else 4.0) * _numel(weight)
    layers, dim = _attention_shape(model)
    return FlopShape(everything - head_flops, head_flops, layers, dim)


def useful_flops(shape: FlopShape, *, tokens: int, labelled: int, sum_sq: int,
                 head_everywhere: bool) -> float:
    """Training FLOPs of the useful work on a set of examples: `tokens` real (non-padding)
    tokens, `labelled` of them predicting a label, `sum_sq` the sum of squared example lengths
    (attention is quadratic in each example's own length). The output layer counts at every
    token when `head_everywhere` (the Trainer's own loss computes it there), else at labelled
    positions only. Padding never counts: it is waste, not work."""
    head_tokens = tokens if head_everywhere else labelled
    return (tokens * shape.body_per_token + head_tokens * shape.head_per_token
            + 12.0 * shape.layers * shape.attn_dim * sum_sq)


def mfu(flops_per_s: float | None, peak_flops: float | None) -> float | None:
    """Model FLOPs utilisation: useful FLOPs per second over the probed matmul peak."""
    if not flops_per_s or not peak_flops:
        return None
    return flops_per_s / peak_flops


def compute_dtype(model, args=None) -> torch.dtype:
    """The precision the matmuls of a training run execute in: bf16/fp16 under autocast
    (`args.bf16` / `args.fp16`), a quantized model's compute dtype, else the weights' dtype."""
    if args is not None and getattr(args, "bf16", False):
        return torch.bfloat16
    if args is not None and getattr(args, "fp16", False):
        return torch.float16
    for module in model.modules():
        dtype = getattr(module, "compute_dtype", None)  # bitsandbytes Linear4bit
        if isinstance(dtype, torch.dtype):
            return dtype
    floating = [p for p in model.parameters() if p.is_floating_point()]
    return max(floating, key=lambda p: p.numel()).dtype if floating else torch.float32


def measure_matmul_peak(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                        seconds: float = 1.0, sizes: Iterable[int] | None = None) -> float:
    """FLOP/s this machine reaches on square matmuls (2 n^3 FLOPs each), best of repeated runs:
    the achievable peak, the denominator of MFU. Uses torch's current thread count. Sizes default
    to 1024 and 2048 on CPU, 4096 and 8192 on accelerators, each given an equal share of
    `seconds`; every size runs at least twice (the first run doubles as the warm-up: it can only
    be slower, and the best run is kept), so a very slow machine may overrun `seconds`."""
    dev = torch.device(device)
    if sizes is None:
        sizes = (1024, 2048) if dev.type == "cpu" else (4096, 8192)
    sizes = list(sizes)
    repeat = 1 if dev.type == "cpu" else 10  # amortise the sync on accelerators
    budget = max(seconds, 0.0) / len(sizes)
    best = 0.0
    gen = torch.Generator(device=dev).manual_seed(0)  # the run's own random state is left alone
    with torch.no_grad():
        for n in sizes:
            a = torch.randn(n, n, dtype=dtype, device=dev, generator=gen)
            b = torch.randn(n, n, dtype=dtype, device=dev, generator=gen)
            out = torch.empty(n, n, dtype=dtype, device=dev)
            _sync(dev)
            deadline, runs = time.perf_counter() + budget, 0
            while runs < 2 or time.perf_counter() < deadline:
                start = time.perf_counter()
                for _ in range(repeat):
                    torch.matmul(a, b, out=out)
                _sync(dev)
                elapsed = time.perf_counter() - start
                if elapsed > 0:
                    best = max(best, 2.0 * n ** 3 * repeat / elapsed)
                runs += 1
            del a, b, out
    return best


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        torch.mps.synchronize()
    elif dev.type == "xpu":
        torch.xpu.synchronize(dev)


@functools.lru_cache(maxsize=None)
def _cached_peak(dtype: torch.dtype, device: str) -> float | None:
    """`measure_matmul_peak` of `dtype` on `device`, probed once per machine: kept in the
    machine cache on disk (`train/machine.py`), so a later run reads it instead of probing."""
    from .machine import cached_probe

    def measure():
        try:
            return measure_matmul_peak(dtype=dtype, device=device)
        except Exception as exc:  # noqa: BLE001 - a meter must never stop a run
            logger.info("Matmul peak probe failed (%s); MFU will not be reported.", exc)
            return None

    return cached_probe(f"matmul_peak/{str(dtype).removeprefix('torch.')}", str(device), measure)


def example_counts(dataset) -> dict:
    """Real tokens, labelled positions (a label at t+1) and the sum of squared lengths of a
    tokenized training set: what `useful_flops` takes."""
    lengths = [len(ids) for ids in dataset["input_ids"]]
    labelled = sum(sum(1 for label in labels[1:] if label != -100) for labels in dataset["labels"])
    return {"tokens": sum(lengths), "labelled": labelled, "sum_sq": sum(n * n for n in lengths)}


def meter_callback(model, train_dataset, output_dir, args, device: str, *,
                   head_everywhere: bool) -> RunReportCallback:
    """The callback every `FineTuner.train()` run gets: useful FLOPs per real token of this
    training set (`useful_flops`), and the matmul peak of the precision the run computes in,
    probed once per machine (`_cached_peak`)."""
    if "input_ids" not in getattr(train_dataset, "column_names", ()):
        # rows TRL tokenizes itself (preference and reward stages): tokens/s only, no FLOPs count
        return RunReportCallback(output_dir)
    counts = example_counts(train_dataset)
    flops = useful_flops(flop_shape(model), **counts, head_everywhere=head_everywhere)
    per_token = flops / max(counts["tokens"], 1)
    return RunReportCallback(output_dir, per_token, _cached_peak(compute_dtype(model, args), str(device)))
