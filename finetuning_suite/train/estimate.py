"""An estimate before the run: its peak memory, broken down, and its time, on a CPU or on CUDA.

    est = estimate_run(model, args, train_set, trainer=trainer, method="lora", device="cpu")
    print(est.text())          # what `finetune train --dry_run` prints; est.line(): the log line

Memory (bytes, at the run's peak):

* weights: every parameter and buffer of the model (4-bit weights at their packed size plus
  their quantization constants); for LoRA/QLoRA the frozen base.
* adapter: LoRA/QLoRA's trainable parameters (full fine-tuning: none; its weights are trained).
* gradients: one per trainable parameter, in its dtype.
* optimizer state: AdamW keeps 2 states per trainable parameter in its dtype (fp32 for LoRA),
  the 8-bit optimizers 2 bytes, SGD none (`optimizer_state_bytes`).
* activations: what the forward keeps for the backward plus the backward's own transients, at
  the worst batch the data gives (dynamic padding pads every row of a batch to its longest, so
  the batch holding the longest row costs batch x longest tokens), with and without gradient
  checkpointing.
* runtime (CPU only): this process besides the model: Python, torch, tokenizer, data; its
  resident memory minus the weights, measured once the weights have been touched (they are
  memory-mapped from the checkpoint file until then) and the C allocator has returned what is
  free.

The peak is the sum of the parts. Live tensors alone would overlap less (the backward makes the
gradients as it frees the activations), but on a CPU the C allocator keeps the freed
activations' memory while gradients and the optimizer state are allocated, and the process's
measured peak is the sum (`bench/results/estimate.md`); on CUDA the caching allocator keeps
freed blocks reserved as well.

Activations are measured, not modelled: one forward + backward of the longest row, on the
device, in the precision and with the loss the run uses (the trainer's own `compute_loss` under
its autocast), runs under a `TorchDispatchMode` that counts every tensor storage torch creates
until it is freed; the peak of that count, times the batch size, is the activation peak (the
parameters, and the tensors that become their gradients, are counted apart). A formula per architecture
would miss what a real step keeps: dropout masks and copies of each LoRA input, the attention
implementation's buffers, upcasts under autocast, the loss's logits. Hooks on the repeated
blocks (decoder layers) give what each block keeps beyond its output; gradient checkpointing
keeps only the output and recomputes one block at a time in the backward, which gives the
other setting's figure from the same step.

Time: steps x seconds per step. The steps are the Trainer's count (max_steps, else epochs x
batches per epoch / accumulation). The seconds per step come from a calibration: one real
forward + backward on a batch of the data at the run's batch size (after the memory probe,
which is the warm-up), timed twice, the faster kept; its rate in useful FLOP/s
(`meter.useful_flops` over the batch's padded tokens: padding costs compute) prices every batch
of an epoch as the sampler draws them from the data's lengths; the optimizer step and gradient
clipping are timed on stand-in tensors of the trainable parameters' shapes and added. Why a timed step and not the matmul peak times
an efficiency: the efficiency is not a constant of the machine. On the bench's 2-core CPU the
embedded model's default step reaches ~40% of the fp32 matmul peak with all-linear LoRA and
dropout, ~60% with full fine-tuning and ~3% of the bf16 peak with QLoRA (dequantizing 4-bit
weights is not matmul work), and it moves with the LoRA targets, the lengths and the batch;
one timed step costs about a step and includes all of it. Without a calibration (the batch
would not fit in memory, several processes, `calibrate=False`) the time is FLOPs / (matmul
peak x the efficiency last calibrated on this machine for the same method and precision, else
`DEFAULT_EFFICIENCY`), and says so.

Calibrations are kept in the machine cache (`train/machine.py`) under a key of the model, the
method, the precision, the batch and the data's lengths: a second identical run reads them.
The estimate leaves the run as it found it: RNG states restored, gradients dropped, train/eval
mode restored. What it does not count: evaluation, generating self-replay answers, the
retention probe, checkpoint saving; on CUDA the allocator's fragmentation.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import random
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from . import machine
from .meter import _cached_peak, compute_dtype, flop_shape, useful_flops

logger = logging.getLogger(__name__)

GIB = 2 ** 30
DEFAULT_EFFICIENCY = 0.2   # fraction of the matmul peak assumed when nothing was calibrated here
SIMULATED_BATCHES = 256    # batches of an epoch drawn to price a step (more: the first ones)
OPTIMIZER_SAMPLE = 16_000_000  # stand-in elements the optimizer step is timed on (beyond the caches)
TIMED_REPEATS = 2          # the timed step runs twice, the faster counts: the first run of a
                           # full batch still allocates, and a busy machine's spikes pass
CALIBRATION_VERSION = 3       # of what a cached calibration holds: older ones are not read
PLACEHOLDER_ANSWER = " ".join(["word"] * 24)  # a dry run's stand-in for a self-replay answer


# -- the result -----------------------------------------------------------------------------------
@dataclass
class MemoryEstimate:
    """Bytes at the run's peak: the sum of the parts. `activations`: at the run's gradient
    checkpointing setting, `activations_other` at the other. `at_once`: activations and
    gradients live at the same moment (less than their sum: the backward makes the gradients
    as it frees the activations); not in the total, since on a CPU the C allocator keeps the
    freed activations' memory while gradients and optimizer state are allocated, so the
    process's peak is the sum (`bench/results/estimate.md`)."""

    weights: int
    adapter: int
    gradients: int
    optimizer: int
    runtime: int
    available: int | None
    gradient_checkpointing: bool
    optimizer_note: str = ""
    activations: int | None = None
    activations_other: int | None = None
    at_once: int | None = None

    def total(self, checkpointing: bool | None = None) -> int:
        other = checkpointing is not None and checkpointing != self.gradient_checkpointing
        act = self.activations_other if other else self.activations
        return self.weights + self.adapter + self.gradients + self.optimizer + self.runtime + int(act or 0)

    @property
    def fits(self) -> bool:
        return self.available is None or self.total() <= self.available


@dataclass
class TimeEstimate:
    steps: int
    seconds_per_step: float | None
    source: str                         # "calibrated", "probe" or "none"
    detail: str = ""
    optimizer_seconds: float = 0.0
    flops_per_second: float | None = None   # the rate a step's FLOPs are priced at

    @property
    def seconds(self) -> float | None:
        return None if self.seconds_per_step is None else self.steps * self.seconds_per_step


@dataclass
class RunEstimate:
    method: str
    device: str
    dtype: str
    rows: int
    batch: int
    accumulation: int
    longest: int
    mean_length: float
    memory: MemoryEstimate
    time: TimeEstimate
    fixes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        m = self.memory
        out["memory"]["total"] = m.total()
        out["memory"]["total_other_checkpointing"] = (m.total(not m.gradient_checkpointing)
                                                      if m.activations_other is not None else None)
        out["time"]["seconds"] = self.time.seconds
        out["line"] = self.line()
        out["warning"] = self.warning()
        return out

    def _ckpt(self, other: bool = False) -> str:
        on = self.memory.gradient_checkpointing != other
        return "with" if on else "without"

    def _memory_parts(self) -> str:
        m = self.memory
        parts = [f"weights {_gib(m.weights)}", f"adapter {_gib(m.adapter)}", f"gradients {_gib(m.gradients)}",
                 f"optimizer {_gib(m.optimizer)}"]
        if m.activations is not None:
            other = f" [{_gib(m.activations_other)} {self._ckpt(True)} gradient checkpointing]" \
                if m.activations_other is not None else ""
            parts.append(f"activations {_gib(m.activations)}{other}")
        if m.runtime:
            parts.append(f"runtime {_gib(m.runtime)}")
        return ", ".join(parts) + " GiB"

    def _memory_head(self) -> str:
        m = self.memory
        room = f" of {_gib(m.available)} GiB available" if m.available else ""
        unknown = "" if m.activations is not None else " before activations"
        return f"{_gib(m.total())} GiB{unknown}{room}"

    def _time_text(self) -> str:
        t = self.time
        if t.seconds_per_step is None:
            return f"{t.steps} steps (time not estimated: {t.detail})"
        return f"{_duration(t.seconds)} ({t.steps} steps x {t.seconds_per_step:.3g} s, {t.source})"

    def line(self) -> str:
        """One line for the log before training."""
        return f"Estimate: peak memory {self._memory_head()} ({self._memory_parts()}); time {self._time_text()}."

    def text(self) -> str:
        """The estimate on several lines (`finetune train --dry_run`, the web page)."""
        m, t = self.memory, self.time
        lines = [f"Estimate for this run: {self.method} on {self.device}, {self.dtype}; {self.rows} training "
                 f"rows, batch {self.batch}" + (f" x {self.accumulation} accumulated" if self.accumulation > 1 else "")
                 + f", longest row {self.longest} tokens, mean {self.mean_length:.0f}.",
                 f"  peak memory      {self._memory_head()}",
                 f"    weights        {_gib(m.weights)} GiB",
                 f"    adapter        {_gib(m.adapter)} GiB",
                 f"    gradients      {_gib(m.gradients)} GiB",
                 f"    optimizer      {_gib(m.optimizer)} GiB  ({m.optimizer_note})"]
        if m.activations is not None:
            extra = f"; {self._ckpt(True)} it {_gib(m.activations_other)} GiB" if m.activations_other is not None else ""
            lines.append(f"    activations    {_gib(m.activations)} GiB  ({self.batch} rows x {self.longest} "
                         f"tokens, {self._ckpt()} gradient checkpointing{extra})")
        else:
            lines.append("    activations    not measured")
        if m.runtime:
            lines.append(f"    runtime        {_gib(m.runtime)} GiB  (this process besides the model: "
                         "Python, torch, tokenizer, data)")
        lines.append(f"  time             {self._time_text()}")
        if t.detail and t.seconds_per_step is not None:
            lines.append(f"    {t.detail}")
        lines.append("    not counted: evaluation, self-replay answers, the retention probe, checkpoint saving")
        lines += [f"  note: {n}" for n in self.notes]
        if self.warning():
            lines.append(f"warning: {self.warning()}")
        return "\n".join(lines)

    def warning(self) -> str | None:
        """The warning (with the fixes) when the expected peak exceeds what the machine has."""
        m = self.memory
        if m.fits:
            return None
        fixes = "; ".join(self.fixes) if self.fixes else "a smaller model or a machine with more memory"
        return (f"this run is expected to need {_gib(m.total())} GiB at its peak, more than the "
                f"{_gib(m.available)} GiB available on {self.device}. Try: {fixes}.")


def _gib(n) -> str:
    return "?" if n is None else f"{n / GIB:.2f}"


def _duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 90:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


# -- the static parts -----------------------------------------------------------------------------
def tensor_bytes(t) -> int:
    """Bytes a parameter or buffer holds: its storage, plus a 4-bit weight's quantization
    constants (bitsandbytes `quant_state`: absmax, nested absmax, code)."""
    n = t.numel() * t.element_size()
    qs = getattr(t, "quant_state", None)
    seen = set()
    while qs is not None and id(qs) not in seen:
        seen.add(id(qs))
        for value in vars(qs).values():
            if isinstance(value, torch.Tensor):
                n += value.numel() * value.element_size()
        qs = getattr(qs, "state2", None)
    return n


def parameter_bytes(model, method: str) -> dict[str, int]:
    """weights / adapter / gradients in bytes (see the module docstring)."""
    frozen = trainable = 0
    for p in model.parameters():  # tied parameters once
        if p.requires_grad:
            trainable += tensor_bytes(p)
        else:
            frozen += tensor_bytes(p)
    buffers = sum(tensor_bytes(b) for b in model.buffers())
    if method == "full":
        return {"weights": frozen + trainable + buffers, "adapter": 0, "gradients": trainable}
    return {"weights": frozen + buffers, "adapter": trainable, "gradients": trainable}


def optimizer_state_bytes(model, optim) -> tuple[int, str]:
    """(bytes, note) of the optimizer's state for the model's trainable parameters."""
    name = str(getattr(optim, "value", optim)).lower()
    params = [p for p in model.parameters() if p.requires_grad]
    numel = sum(p.numel() for p in params)
    states = 1 if any(k in name for k in ("lion", "adagrad", "rmsprop")) else 2
    if "sgd" in name or "lomo" in name:
        return 0, f"{name}: no state"
    if "adafactor" in name:
        n = sum(((p.shape[0] + p.shape[-1]) if p.dim() >= 2 else p.numel()) * 4 for p in params)
        return n, f"{name}: factored second moments"
    if "8bit" in name:
        return states * numel + states * numel // 256 * 4, f"{name}: {states} 8-bit states per trainable parameter"
    dtype = str(next((p.dtype for p in params), torch.float32)).removeprefix("torch.")
    return states * sum(p.numel() * p.element_size() for p in params), \
        f"{name}: {states} {dtype} states per trainable parameter"


# -- measuring activations ------------------------------------------------------------------------
class LiveStorage(TorchDispatchMode):
    """Counts the bytes of every tensor storage created while active, until it is freed.

    Storages in `skip` (parameters, buffers) are not counted. Gradients are counted apart
    (`grads`) from the activations (`live`): in the backward (`backward` set), a tensor of a
    trainable parameter's shape (`grad_shapes`) is a gradient or a part of one (a tied weight's
    two contributions wait in the autograd engine until both are made), and a storage that
    becomes a `.grad` (`grad_of`, a post-accumulate-grad hook) moves there too. `peak`: the
    most activation bytes at once; `peaks[k]`: the most of `k * activations + gradients` at
    once, the peak of a batch of k rows when one row was run (activations scale with the rows,
    gradients do not)."""

    def __init__(self, skip=(), multiples=(1,), grad_shapes=()):
        super().__init__()
        self.skip = set(skip)
        self.grad_shapes = set(grad_shapes)
        self.backward = False
        self.live = self.grads = self.peak = 0
        self.peaks = {int(k): 0 for k in multiples}
        self._refs: dict[int, Any] = {}
        self._grad_keys: set[int] = set()

    def _freed(self, key: int, n: int):
        def callback(_ref):
            if key in self._grad_keys:
                self.grads -= n
                self._grad_keys.discard(key)
            else:
                self.live -= n
            self._refs.pop(key, None)
        return callback

    def grad_of(self, param) -> None:
        grad = param.grad
        if grad is None:
            return
        key = grad.untyped_storage().data_ptr()
        if key in self._refs and key not in self._grad_keys:
            n = grad.untyped_storage().nbytes()
            self._grad_keys.add(key)
            self.live -= n
            self.grads += n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.is_meta:
                continue
            try:
                storage = t.untyped_storage()
            except (RuntimeError, NotImplementedError):
                continue
            key, n = storage.data_ptr(), storage.nbytes()
            if n == 0 or key in self.skip or key in self._refs:
                continue
            self._refs[key] = weakref.ref(storage, self._freed(key, n))
            if self.backward and tuple(t.shape) in self.grad_shapes:
                self._grad_keys.add(key)
                self.grads += n
            else:
                self.live += n
                self.peak = max(self.peak, self.live)
            for k in self.peaks:
                self.peaks[k] = max(self.peaks[k], k * self.live + self.grads)
        return out


def repeated_blocks(model) -> list[torch.nn.Module]:
    """The model's repeated blocks (decoder layers; an encoder-decoder's two stacks): the
    elements of every `nn.ModuleList` of at least two modules of one class."""
    blocks = []
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) >= 2 \
                and len({type(m) for m in module}) == 1 and not any(m in blocks for m in module):
            children = list(module)
            if sum(p.numel() for p in children[0].parameters()) > 0:
                blocks.extend(children)
    # nested lists (a block holding a ModuleList of experts or LoRA layers) belong to the block
    inside = {id(m) for b in blocks for m in b.modules() if m is not b}
    return [b for b in blocks if id(b) not in inside]


class _BlockMeter:
    """Forward hooks on the blocks: per call, live bytes before and after and the output's size."""

    def __init__(self, blocks, live: LiveStorage):
        self.live, self.calls = live, []
        self.handles = []
        for block in blocks:
            self.handles.append(block.register_forward_pre_hook(self._pre))
            self.handles.append(block.register_forward_hook(self._post))
        self._stack: list[int] = []

    def _pre(self, module, args):
        self._stack.append(self.live.live)

    def _post(self, module, args, output):
        before = self._stack.pop() if self._stack else self.live.live
        first = output[0] if isinstance(output, (tuple, list)) else getattr(output, "last_hidden_state", output)
        out = first.untyped_storage().nbytes() if isinstance(first, torch.Tensor) else 0
        self.calls.append((self.live.live - before, out))

    def remove(self):
        for h in self.handles:
            h.remove()


# -- the run's batches ----------------------------------------------------------------------------
def _row_lengths(dataset) -> list[int]:
    lengths = [len(x) for x in dataset["input_ids"]]
    if "decoder_input_ids" not in dataset.column_names and "labels" in dataset.column_names:
        labels = dataset["labels"]
        if any(len(lab) != n for lab, n in zip(labels[:16], lengths[:16])):  # seq2seq: decoder too
            lengths = [n + len(lab) for n, lab in zip(lengths, labels)]
    return lengths


def epoch_batches(lengths: list[int], batch: int, strategy: str = "random", seed: int = 0,
                  drop_last: bool = False, limit: int = SIMULATED_BATCHES) -> list[list[int]]:
    """Row indices of an epoch's first `limit` batches as the Trainer's sampler draws them
    (random, sequential, or group_by_length's megabatches of 50 batches sorted by length)."""
    n = len(lengths)
    g = torch.Generator().manual_seed(seed)
    order = list(range(n)) if strategy == "sequential" else torch.randperm(n, generator=g).tolist()
    if strategy == "group_by_length":
        mega = 50 * batch
        order = [i for k in range(0, n, mega)
                 for i in sorted(order[k:k + mega], key=lambda i: -lengths[i])]
    batches = [order[k:k + batch] for k in range(0, n, batch)]
    if drop_last and batches and len(batches[-1]) < batch:
        batches.pop()
    return batches[:limit]


def batch_flops(shape, batch: dict, head_everywhere: bool) -> float:
    """Training FLOPs of a collated batch as it is computed: every position of the padded
    tensors (padding costs compute), attention over the padded length (or each packed
    example's own, when `position_ids` restart)."""
    ids = batch["input_ids"]
    tokens = ids.numel()
    labels = batch.get("labels")
    labelled = int((labels[:, 1:] != -100).sum()) if labels is not None and labels.dim() == 2 else tokens
    pos = batch.get("position_ids")
    if pos is not None and ids.shape[0] == 1:
        starts = (pos[0] == 0).nonzero().flatten().tolist() + [pos.shape[-1]]
        sum_sq = sum((b - a) ** 2 for a, b in zip(starts, starts[1:]))
    else:
        sum_sq = ids.shape[0] * ids.shape[-1] ** 2
    if "decoder_input_ids" in batch:
        dec = batch["decoder_input_ids"]
        tokens += dec.numel()
        sum_sq += dec.shape[0] * dec.shape[-1] ** 2
    return useful_flops(shape, tokens=tokens, labelled=labelled, sum_sq=sum_sq, head_everywhere=head_everywhere)


def train_steps(args, n_rows: int) -> int:
    """Optimizer steps of the run, counted as the Trainer counts them."""
    world = max(int(getattr(args, "world_size", 1) or 1), 1)
    per_rank = math.ceil(n_rows / world)
    batch = args.per_device_train_batch_size
    loader = per_rank // batch if args.dataloader_drop_last else math.ceil(per_rank / batch)
    ga = max(args.gradient_accumulation_steps, 1)
    per_epoch = max(loader // ga + int(loader % ga > 0), 1)
    return args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * per_epoch)


# -- the calibration ------------------------------------------------------------------------------
class _Step:
    """Forward + backward of a batch of the training set, as the run computes it."""

    def __init__(self, model, args, dataset, trainer=None, device="cpu"):
        self.model, self.args, self.trainer, self.device = model, args, trainer, str(device)
        if trainer is not None and hasattr(trainer, "_remove_unused_columns"):
            dataset = trainer._remove_unused_columns(dataset)
        self.dataset = dataset
        self.collator = trainer.data_collator if trainer is not None else _pad_rows

    def collate(self, rows: list[int]) -> dict:
        return self.collator([self.dataset[i] for i in rows])

    def _to_device(self, batch: dict) -> dict:
        if self.trainer is not None:
            return self.trainer._prepare_inputs(batch)
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def _autocast(self):
        if self.trainer is not None:
            return self.trainer.accelerator.autocast()
        dtype = torch.bfloat16 if getattr(self.args, "bf16", False) else \
            torch.float16 if getattr(self.args, "fp16", False) else None
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(self.device).type, dtype=dtype)

    def run(self, batch: dict, before_backward=None) -> None:
        batch = self._to_device(batch)
        labels = batch.get("labels")
        n = int((labels[..., 1:] != -100).sum()) if labels is not None else None
        with self._autocast():
            if self.trainer is not None:
                loss = self.trainer.compute_loss(self.model, batch, num_items_in_batch=n)
            else:
                loss = self.model(**batch).loss
        del batch
        if before_backward is not None:
            before_backward()
        loss.backward()


def _pad_rows(rows: list[dict]) -> dict:
    """Rows padded on the right to the longest (input_ids 0, attention_mask 0, labels -100)."""
    longest = max(len(r["input_ids"]) for r in rows)
    fill = {"input_ids": 0, "attention_mask": 0, "labels": -100}
    return {k: torch.tensor([list(r[k]) + [pad] * (longest - len(r[k])) for r in rows])
            for k, pad in fill.items() if k in rows[0]}


@contextlib.contextmanager
def _untouched(model, device: str):
    """The model and RNGs as they were, whatever runs inside (gradients dropped at the end)."""
    states = (torch.get_rng_state(), random.getstate())
    try:
        import numpy as np

        np_state = np.random.get_state()
    except ImportError:
        np, np_state = None, None
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    training = model.training
    grads = {p: p.grad for p in model.parameters() if p.grad is not None}
    try:
        yield
    finally:
        for p in model.parameters():
            p.grad = grads.get(p)
        model.train(training)
        torch.set_rng_state(states[0])
        random.setstate(states[1])
        if np is not None:
            np.random.set_state(np_state)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        if str(device).startswith("cuda"):
            torch.cuda.empty_cache()


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _checkpointing(model) -> bool:
    on = getattr(model, "is_activation_checkpointing", None)
    return bool(getattr(model, "is_gradient_checkpointing", False) if on is None else on)


def _set_checkpointing(model, args, on: bool) -> None:
    """Gradient checkpointing on (as `Trainer.train` turns it on: it finds it on and keeps it) or off."""
    if on == _checkpointing(model):
        return
    if not on:
        off = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
        off()
        return
    kwargs = dict(getattr(args, "activation_checkpointing_kwargs", None)
                  or getattr(args, "gradient_checkpointing_kwargs", None) or {})
    kwargs.pop("every_n_layers", None), kwargs.pop("offload", None)
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs or None)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs or None)


def measure_activations(step: _Step, row: int, batch: int) -> dict:
    """One forward + backward of `row` alone under `LiveStorage`, without gradient
    checkpointing: its activation peak (`per_row`), the peak of activations and gradients
    together for a batch of `batch` rows (`together`; the backward makes gradients as it frees
    activations: less than their sum), and what gradient checkpointing
    saves per row, from the blocks' hooks: each block then keeps only its output, and one block
    is recomputed at a time in the backward (`checkpointing_saves_per_row`)."""
    model = step.model
    skip = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    live = LiveStorage(skip, multiples=(batch,),
                       grad_shapes=[tuple(p.shape) for p in model.parameters() if p.requires_grad])
    hooks = [p.register_post_accumulate_grad_hook(live.grad_of) for p in model.parameters() if p.requires_grad]
    meter = _BlockMeter(repeated_blocks(model), live)
    rows = step.collate([row])
    model.train()
    try:
        with live:
            step.run(rows, before_backward=lambda: setattr(live, "backward", True))
    finally:
        meter.remove()
        for h in hooks:
            h.remove()
    _sync(step.device)
    kept = [max(0, d - out) for d, out in meter.calls]
    return {"per_row": live.peak, "together": {str(k): v for k, v in live.peaks.items()},
            "checkpointing_saves_per_row": sum(kept) - max(kept) if kept else None}


def time_step(step: _Step, rows: list[int], repeats: int = 1) -> float:
    """Seconds of the fastest of `repeats` forward + backward passes of these rows."""
    batch = step.collate(rows)
    best = math.inf
    step.model.train()
    for _ in range(repeats):
        _sync(step.device)
        start = time.perf_counter()
        step.run(batch)
        _sync(step.device)
        best = min(best, time.perf_counter() - start)
        for p in step.model.parameters():
            p.grad = None
    return best


def optimizer_seconds(model, args) -> float:
    """Seconds of one optimizer step (and gradient clipping) for the trainable parameters,
    timed on stand-in tensors of their shapes (at most `OPTIMIZER_SAMPLE` elements, scaled)."""
    from transformers import Trainer

    params = [p for p in model.parameters() if p.requires_grad]
    total = sum(p.numel() for p in params)
    if not total:
        return 0.0
    picked, count = [], 0
    for p in params:
        if count >= OPTIMIZER_SAMPLE:
            break
        picked.append(p)
        count += p.numel()
    dummies = [torch.nn.Parameter(torch.zeros(p.shape, dtype=p.dtype, device=p.device)) for p in picked]
    for d in dummies:
        d.grad = torch.full_like(d, 1e-3)
    try:
        cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
        opt = cls(dummies, **kwargs)
    except Exception:  # noqa: BLE001 - an optimizer that needs more than tensors: AdamW's time
        opt = torch.optim.AdamW(dummies, lr=1e-4)
    clip = float(getattr(args, "max_grad_norm", 0) or 0)
    best = math.inf
    device = str(picked[0].device)
    for i in range(4):
        _sync(device)
        start = time.perf_counter()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(dummies, clip)
        opt.step()
        _sync(device)
        if i:  # the first step allocates the state
            best = min(best, time.perf_counter() - start)
    return best * total / count


# -- the estimate ---------------------------------------------------------------------------------
def estimate_run(model, args, train_set, *, trainer=None, method: str = "lora", device: str = "cpu",
                 calibrate: bool = True, use_cache: bool = True, notes: list[str] | None = None) -> RunEstimate:
    """The estimate of training `model` on `train_set` (tokenized rows) with `args`
    (TrainingArguments); `trainer`: the run's trainer (its collator, loss and autocast), built
    but not trained. See the module docstring."""
    device = str(device)
    notes = list(notes or [])
    dtype = str(compute_dtype(model, args)).removeprefix("torch.")
    params = parameter_bytes(model, method)
    opt_bytes, opt_note = optimizer_state_bytes(model, getattr(args, "optim", "adamw_torch"))
    checkpointing = bool(getattr(args, "activation_checkpointing", None) or getattr(args, "gradient_checkpointing", False))
    batch, ga = int(args.per_device_train_batch_size), int(max(args.gradient_accumulation_steps, 1))
    available = machine.memory_available(device)
    tokenized = {"input_ids", "labels"} <= set(getattr(train_set, "column_names", ()))
    n_rows = len(train_set)
    steps = train_steps(args, n_rows)
    memory = MemoryEstimate(**params, optimizer=opt_bytes, runtime=0, available=available,
                            gradient_checkpointing=checkpointing, optimizer_note=opt_note)
    result = RunEstimate(method=method, device=device, dtype=dtype + (" autocast" if args.bf16 or args.fp16 else ""),
                         rows=n_rows, batch=batch, accumulation=ga, longest=0, mean_length=0.0,
                         memory=memory, time=TimeEstimate(steps, None, "none"), notes=notes)
    if not tokenized:
        if not device.startswith("cuda"):
            memory.runtime = max(0, machine.process_rss() - memory.weights - memory.adapter)
        result.time.detail = "the rows are tokenized by the stage's trainer"
        result.notes.append("activations and time are estimated for sft runs only (this stage's trainer "
                            "tokenizes its rows itself).")
        _finish(result, model, None)
        return result
    step = _Step(model, args, train_set, trainer, device)
    lengths = _row_lengths(step.dataset)
    result.longest, result.mean_length = max(lengths), sum(lengths) / len(lengths)
    strategy = str(getattr(getattr(args, "train_sampling_strategy", "random"), "value",
                           getattr(args, "train_sampling_strategy", "random")))
    if getattr(args, "group_by_length", False):
        strategy = "group_by_length"
    batches = epoch_batches(lengths, batch, strategy, seed=args.seed, drop_last=args.dataloader_drop_last)
    from .loss import uses_labelled_loss

    head_everywhere = not (trainer is not None and uses_labelled_loss(trainer))
    shape = flop_shape(model)
    collated = [step.collate(b) for b in batches]
    flops = [batch_flops(shape, c, head_everywhere) for c in collated]
    mean_flops = sum(flops) / len(flops)
    longest = max(range(len(lengths)), key=lengths.__getitem__)

    key = _calibration_key(model, args, method, device, dtype, lengths, checkpointing)
    cal = machine.cached_value(key, device) if use_cache else None
    if cal is None and calibrate:
        cal = _calibrate(step, model, args, device, longest, batches, flops, memory, batch, checkpointing)
        if cal.get("complete") and use_cache:
            machine.store_value(key, device, cal)
            peak = _cached_peak(getattr(torch, dtype), device)
            if peak and cal.get("rate"):
                machine.store_value(_efficiency_key(method, dtype, checkpointing), device, cal["rate"] / peak)
    elif cal is not None:
        result.notes.append("calibration read from the machine cache (the same model, settings and data "
                            "measured before on this machine).")
    cal = cal or {}
    if cal.get("activations") is not None:
        memory.activations = activation_bytes(cal["activations"], batch, checkpointing)
        memory.activations_other = activation_bytes(cal["activations"], batch, not checkpointing)
        memory.at_once = activation_bytes(cal["activations"], batch, checkpointing, with_grads=True)
    if not device.startswith("cuda"):
        memory.runtime = int(cal["runtime"]) if "runtime" in cal else \
            max(0, machine.process_rss() - memory.weights - memory.adapter)
    if cal.get("error"):
        result.notes.append(cal["error"])
    opt_s = cal.get("optimizer_seconds")
    if cal.get("rate"):
        per_step = ga * mean_flops / cal["rate"] + (opt_s or 0.0)
        peak = _cached_peak(getattr(torch, dtype), device)
        of_peak = f", {100 * cal['rate'] / peak:.0f}% of the {dtype} matmul peak" if peak else ""
        result.time = TimeEstimate(steps, per_step, "calibrated",
                                   f"a timed forward + backward on a batch of the data ({cal['rate'] / 1e9:.1f} "
                                   f"GFLOP/s{of_peak}) prices each batch by its padded FLOPs; optimizer step "
                                   f"{opt_s or 0:.2f} s", opt_s or 0.0, cal["rate"])
    else:
        peak = _cached_peak(getattr(torch, dtype), device)
        if peak:
            eff = machine.cached_value(_efficiency_key(method, dtype, checkpointing), device)
            source = "measured on this machine before" if eff else "an assumed default"
            eff = eff or DEFAULT_EFFICIENCY
            per_step = ga * mean_flops / (peak * eff) + (opt_s or 0.0)
            result.time = TimeEstimate(steps, per_step, "probe",
                                       f"FLOPs / ({peak / 1e9:.0f} GFLOP/s {dtype} matmul peak x {eff:.0%} "
                                       f"efficiency, {source})", opt_s or 0.0, peak * eff)
        else:
            result.time.detail = "no matmul peak could be probed"
    _finish(result, model, cal.get("activations"))
    return result


def activation_bytes(measured: dict, rows: int, checkpointing: bool, with_grads: bool = False) -> int | None:
    """Activation bytes of a batch of `rows` (the longest length) from `measure_activations`'s
    figures; `with_grads`: activations and gradients at once."""
    saved = measured.get("checkpointing_saves_per_row")
    if checkpointing and saved is None:
        return None
    if with_grads:
        together = measured["together"].get(str(rows))
        if together is None:
            return None
        value = together
    else:
        value = rows * measured["per_row"]
    return int(max(0, value - (rows * saved if checkpointing else 0)))


def _calibrate(step, model, args, device, longest, batches, flops, memory, batch, checkpointing) -> dict:
    """The measurements behind an estimate (see the module docstring); 'complete' when all ran."""
    out: dict[str, Any] = {}
    oom = getattr(torch, "OutOfMemoryError", RuntimeError)
    with _untouched(model, device):
        _set_checkpointing(model, args, False)  # measured without, the other figure derived
        try:
            out["activations"] = measure_activations(step, longest, batch)
        except oom:
            out["error"] = "one row of the longest length did not fit in memory."
            return out
        finally:
            for p in model.parameters():
                p.grad = None
            _set_checkpointing(model, args, checkpointing)
        if not device.startswith("cuda"):  # the weights are resident now: they were just used
            out["runtime"] = max(0, _resident_now() - memory.weights - memory.adapter)
        expected = memory.total() + out.get("runtime", 0) + \
            (activation_bytes(out["activations"], batch, checkpointing) or 0)
        if memory.available and expected > memory.available:
            out["error"] = "the batch was not timed: it would not fit in memory."
            return out
        typical = sorted(range(len(flops)), key=flops.__getitem__)[len(flops) // 2]
        try:
            seconds = time_step(step, batches[typical], repeats=TIMED_REPEATS)
            out["optimizer_seconds"] = optimizer_seconds(model, args)
        except oom:
            out["error"] = "a batch did not fit in memory when timed."
            return out
        out["rate"] = flops[typical] / seconds
        out["complete"] = True
    return out


def _resident_now() -> int:
    """This process's resident memory once the C allocator has handed back what is free (glibc
    keeps freed blocks; the probe's activations would otherwise count as runtime)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return machine.process_rss()


def _calibration_key(model, args, method, device, dtype, lengths, checkpointing) -> str:
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
    described = {"version": CALIBRATION_VERSION, "model": str(name), "class": type(model).__name__,
                 "params": sum(p.numel() for p in model.parameters()),
                 "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
                 "method": method, "device": device, "dtype": dtype, "batch": args.per_device_train_batch_size,
                 "checkpointing": checkpointing, "optim": str(getattr(args.optim, "value", args.optim)),
                 "lengths": hashlib.sha1(json.dumps(lengths).encode()).hexdigest(), "seed": args.seed,
                 "attn": str(getattr(getattr(model, "config", None), "_attn_implementation", None))}
    return "calibration/" + hashlib.sha1(json.dumps(described, sort_keys=True).encode()).hexdigest()


def _efficiency_key(method: str, dtype: str, checkpointing: bool) -> str:
    return f"efficiency/{method}/{dtype}/{'checkpointing' if checkpointing else 'plain'}"


# -- fixes ----------------------------------------------------------------------------------------
def _qlora_bytes(model, method: str, memory: MemoryEstimate) -> int:
    """About what the same run needs with method='qlora': the blocks' nn.Linear weights at 4
    bits (0.52 bytes a weight with the quantization constants), every other weight in fp32, the
    adapter with its gradient and 2 optimizer states (LoRA r=16 on every linear layer of the
    blocks when the run trains all weights), activations with gradient checkpointing."""
    linears = [m for b in repeated_blocks(model) for m in b.modules()
               if isinstance(m, torch.nn.Linear) and (method == "full" or not m.weight.requires_grad)]
    quantizable = sum(m.weight.numel() for m in linears)
    frozen = sum(p.numel() for p in model.parameters() if method == "full" or not p.requires_grad)
    weights = int(quantizable * 0.52 + (frozen - quantizable) * 4)
    adapter = sum(16 * (m.in_features + m.out_features) * 4 for m in linears) if method == "full" \
        else memory.adapter
    acts = [a for a in (memory.activations, memory.activations_other) if a is not None]
    return weights + 4 * adapter + memory.runtime + int(min(acts) if acts else 0)


def _finish(result: RunEstimate, model, measured: dict | None) -> None:
    """The fixes, when the expected peak exceeds what the machine has."""
    m = result.memory
    if m.fits:
        return
    fixes = []
    base = m.weights + m.adapter + m.gradients + m.optimizer + m.runtime
    if measured is not None and result.batch > 1:
        b = result.batch // 2
        while b >= 1:
            need = base + (activation_bytes(measured, b, m.gradient_checkpointing) or 0)
            if m.available is None or need <= m.available or b == 1:
                still = "" if m.available is None or need <= m.available else ", still too much"
                fixes.append(f"per_device_train_batch_size={b} with gradient_accumulation_steps="
                             f"{result.accumulation * result.batch // b} (the same examples per step): "
                             f"~{_gib(need)} GiB{still}")
                break
            b //= 2
    if not m.gradient_checkpointing and m.activations_other is not None:
        fixes.append(f"gradient_checkpointing=True: ~{_gib(m.total(True))} GiB (steps about 1.3x slower)")
    if result.method != "qlora":
        slower = "" if result.device.startswith("cuda") else "; slower per step on a CPU"
        fixes.append(f"method=\"qlora\" (a 4-bit base{slower}): about {_gib(_qlora_bytes(model, result.method, m))} GiB")
    result.fixes = fixes


# -- the package's entry points ------------------------------------------------------------------
def _method(ft) -> str:
    return "qlora" if ft._bits() else ft.config.method.method


def before_training(ft, trainer, args) -> dict | None:
    """`FineTuner.train`'s estimate: logged (one line; a warning when memory will not do),
    returned for the run record. Never stops the run."""
    if args.process_index != 0:
        return None
    try:
        est = estimate_run(ft.model, args, trainer.train_dataset, trainer=trainer, method=_method(ft),
                           device=ft.device, calibrate=args.world_size == 1)
    except Exception as exc:  # noqa: BLE001 - an estimate must never stop a run
        logger.info("No estimate before training (%s: %s).", type(exc).__name__, exc)
        return None
    logger.info(est.line())
    if est.warning():
        logger.warning("Estimate: %s", est.warning())
    return est.to_dict()


def dry_run(ft) -> RunEstimate:
    """What `finetune train --dry_run` prints: the data prepared, the settings chosen and the
    trainer built as `FineTuner.train` would (in a temporary folder), then the estimate; nothing
    trained, no output folder written. Self-replay rows are not generated: as many stand-in rows
    (the real prompts, a 24-word answer) take their place."""
    from ..data.chat_template import tokenizer_with_template

    prepared = ft._prepared_for_now()
    replay_n = ft._choose_defaults(prepared, None)
    notes = []
    with tempfile.TemporaryDirectory(prefix="finetune-dry-run-") as tmp:
        args = ft._training_arguments(tmp, None, prepared)
        train_set = prepared.train
        if ft.stage != "sft":
            return estimate_run(ft.model, args, train_set, method=_method(ft), device=ft.device)
        if replay_n > 0:
            train_set = _with_placeholder_replay(ft, prepared, replay_n)
            notes.append(f"{len(train_set) - len(prepared.train)} self-replay rows stood in by placeholder "
                         "answers (a dry run generates none).")
        trainer = ft.trainer_config.build_trainer(
            model=ft.model, args=args, tokenizer=tokenizer_with_template(ft.tokenizer, prepared.chat_format),
            train_dataset=train_set, eval_dataset=None, encoder_decoder=ft.is_encoder_decoder)
        return estimate_run(ft.model, args, train_set, trainer=trainer, method=_method(ft), device=ft.device,
                            notes=notes)


def _with_placeholder_replay(ft, prepared, n: int):
    import datasets

    from ..data.replay import replay_dataset

    replay = replay_dataset(lambda prompts: [PLACEHOLDER_ANSWER] * len(prompts), n, ft.tokenizer,
                            ft.model.config, prepared.chat_format, prepared.train.column_names)
    return prepared.train if replay is None else datasets.concatenate_datasets([prepared.train, replay])
