"""Padding-free packing: a batch's examples in one row, without padding, kept apart.

Why: on examples of mixed lengths a padded batch computes on padding (a third of the tokens
fed on the speed bench's workload, issue 19). Packing concatenates the examples of a batch into
one row instead. `transformers.DataCollatorWithFlattening` already does exactly that, so it is
used as is: `position_ids` restart at every example, each example's first label is -100 (the
causal loss shifts inside the row, and the last token of one example must not be trained to
predict the first of the next), and `cu_seq_lens_q/k` + `max_length_q/k` mark the boundaries.

Keeping the examples apart is the attention's job, and transformers' built-in attentions do it
only some of the time:

- `flash_attention_2` / `flash_attention_3` (CUDA) read `cu_seq_lens`: variable-length kernels,
  exact. Where the model runs one of them, packing keeps it.
- `sdpa` and `eager` find the boundaries from `position_ids` only when no attention mask and
  no cache is given (`use_cache=False`); when either is there they attend across examples and
  say nothing. Even when they do isolate, they build a dense mask over the packed length (cost
  quadratic in the row, not in each example).
- Everywhere else (CPU, or CUDA without flash-attn): `packed_sdpa`, registered here with
  transformers' `AttentionInterface`: causal SDPA run once per example, cost the sum of the
  squares of the lengths, no mask at all. transformers builds no mask for a name its mask
  interface does not know, so no mask hook is needed. (The name must not contain "flash":
  transformers would treat it as a flash-attention kernel.)

The attention is switched only around the trainer's own steps (`PackedTrainerMixin`), so
generation, evaluation outside the trainer and saving see the model as it was loaded, and
gradient checkpointing's replay (inside the step's backward) sees the same attention and the
same boundary keywords.

`check_can_pack` refuses, with one `ConfigError` naming the model type and the fix, a model
whose packed examples would not be kept apart (an encoder-decoder, an attention that does not
go through `AttentionInterface`, or one `packed_sdpa` cannot serve: logit soft-capping,
attention sinks, T5-style position bias), checked by a probe rather than a list of names: an
example's logits packed behind another must equal its logits alone.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ..data.preprocessing import IGNORE_INDEX
from ..errors import ConfigError
from ..model.facts import is_encoder_decoder

PACKED_SDPA = "packed_sdpa"
# transformers' implementations that read cu_seq_lens (variable-length kernels).
VARLEN_IMPLEMENTATIONS = frozenset({"flash_attention_2", "flash_attention_3"})
BOUNDARY_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
FIX = "Train without packing (packing=False)."


# -- the attention ------------------------------------------------------------------------------
def packed_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                          scaling: float | None = None, is_causal: bool | None = None,
                          sliding_window: int | None = None, softcap=None, s_aux=None,
                          position_bias=None, position_ids=None, cu_seq_lens_q=None,
                          cu_seq_lens_k=None, **kwargs):
    """An `AttentionInterface` function: causal SDPA over each packed example on its own.

    query: [batch, heads, time, dim]; key/value: [batch, kv_heads, time, dim] (grouped-query
    heads are not repeated: SDPA's `enable_gqa`). Returns ([batch, time, heads, dim], None).
    The examples are `cu_seq_lens_q` (cumulative lengths over the batch's rows flattened, the
    flash-attention convention), else the restarts of `position_ids`, else one per row. It runs
    training forwards only: a padding mask, a cache (queries shorter than keys) or a feature it
    does not implement raises rather than computing something else."""
    for name, given in (("logit soft-capping", softcap), ("attention sinks", s_aux),
                        ("a position bias", position_bias)):
        if given is not None:
            raise NotImplementedError(f"{PACKED_SDPA} does not implement {name}.")
    batch, heads, length, _ = query.shape
    if key.shape[2] != length:
        raise NotImplementedError(f"{PACKED_SDPA} runs training forwards only: {length} queries "
                                  f"against {key.shape[2]} keys (a cache) is decoding.")
    if attention_mask is not None and not (attention_mask.ndim == 2 and bool(attention_mask.all())):
        raise NotImplementedError(f"{PACKED_SDPA} takes no padding or {attention_mask.ndim}-D "
                                  "attention mask: packed rows have none.")
    if cu_seq_lens_q is not None:
        if cu_seq_lens_k is not None and not torch.equal(torch.as_tensor(cu_seq_lens_q),
                                                         torch.as_tensor(cu_seq_lens_k)):
            raise NotImplementedError(f"{PACKED_SDPA}: cu_seq_lens_q and cu_seq_lens_k differ.")
        bounds = torch.as_tensor(cu_seq_lens_q).tolist()
        lengths = [b - a for a, b in zip(bounds, bounds[1:])]
    elif position_ids is not None:
        lengths = lengths_from_positions(position_ids.expand(batch, -1))
    else:
        lengths = [length] * batch
    if sum(lengths) != batch * length:
        raise ValueError(f"{PACKED_SDPA}: the examples' lengths sum to {sum(lengths)}, the batch "
                         f"holds {batch} x {length} tokens.")
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    gqa = key.shape[1] != heads

    def flat(x):  # [batch, h, time, d] -> [h, batch * time, d]: examples index the flat tokens
        return x.transpose(0, 1).reshape(x.shape[1], batch * length, x.shape[-1])

    pieces = [_example_sdpa(q, k, v, causal, scaling, dropout, gqa, sliding_window)
              for q, k, v in zip(*(flat(x).split(lengths, dim=1) for x in (query, key, value)))]
    out = torch.cat(pieces, dim=1).reshape(heads, batch, length, -1).permute(1, 2, 0, 3)
    return out.contiguous(), None


def _example_sdpa(q, k, v, causal: bool, scale, dropout: float, gqa: bool, window: int | None):
    """SDPA over one example: q [heads, n, d], k/v [kv_heads, n, d]. A sliding window (Qwen2,
    Mistral) is transformers' band: key j is seen from query i when i - window < j <= i."""
    n, mask = q.shape[1], None
    if window is not None and n > window:
        i = torch.arange(n, device=q.device)
        mask = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window)
        causal = False
    out = F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask, dropout_p=dropout,
                                         is_causal=causal and n > 1, scale=scale, enable_gqa=gqa)
    return out[0]


def lengths_from_positions(position_ids: torch.Tensor) -> list[int]:
    """Example lengths over the rows flattened: an example starts at every row start and
    wherever a position does not follow the previous one."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    index = starts.reshape(-1).nonzero().flatten().tolist() + [position_ids.numel()]
    return [b - a for a, b in zip(index, index[1:])]


def register() -> None:
    """Make `packed_sdpa` an attention implementation transformers can select (process-wide;
    done on first use, so importing this module changes nothing)."""
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)


# -- which attention, switched on for the trainer's steps only ---------------------------------
def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def packed_implementation(model) -> str:
    """The attention packed batches run with: the model's own when it reads `cu_seq_lens`
    (flash-attention on CUDA), else `packed_sdpa`."""
    current = _base(model).config._attn_implementation
    return current if current in VARLEN_IMPLEMENTATIONS else PACKED_SDPA


@contextmanager
def attention(model, implementation: str):
    """Within the block, `model` (or the base model of a PEFT model) computes attention with
    `implementation`; the one it had is restored after."""
    base = _base(model)
    previous = base.config._attn_implementation
    if implementation == previous:
        yield
        return
    if implementation == PACKED_SDPA:
        register()
    base.set_attn_implementation(implementation)
    try:
        yield
    finally:
        base.set_attn_implementation(previous)


class PackedTrainerMixin:
    """A `transformers.Trainer` mixin: every training and evaluation step runs with the packed
    attention (`packed_attention`, set by `packed_trainer_class`)."""

    packed_attention = PACKED_SDPA

    def training_step(self, model, inputs, *args, **kwargs):
        with attention(self.model, self.packed_attention):  # backward (and its replay) inside
            return super().training_step(model, inputs, *args, **kwargs)

    def prediction_step(self, model, inputs, *args, **kwargs):
        with attention(self.model, self.packed_attention):
            return super().prediction_step(model, inputs, *args, **kwargs)

    def _track_num_input_tokens(self, inputs):
        # A packed row has no padding, so every token counts; without an attention mask the
        # Trainer would count the tokens that differ from the pad id, missing EOS where pad == eos.
        name = getattr(self.model, "main_input_name", "input_ids")
        if "attention_mask" not in inputs and name in inputs:
            inputs = {**inputs, "attention_mask": torch.ones_like(inputs[name])}
        return super()._track_num_input_tokens(inputs)


def packed_trainer_class(base, implementation: str):
    """`base` (Trainer or a subclass) whose steps run with `implementation`."""
    return type(f"Packed{base.__name__}", (PackedTrainerMixin, base), {"packed_attention": implementation})


# -- the batches ------------------------------------------------------------------------------
def packing_collator():
    """Rows of input_ids/labels -> one row of them, with position_ids and the boundaries."""
    from transformers import DataCollatorWithFlattening

    return DataCollatorWithFlattening(return_flash_attn_kwargs=True)


def scored_positions(batch) -> list[int]:
    """How many positions of each example the causal loss scores (those whose next token has a
    label), example by example in the loss's order: the rows of a padded batch, or the examples
    of a packed one (`cu_seq_lens_q`; an example [a, b) of the flat row scores labels[a+1:b])."""
    labels = batch["labels"]
    if "cu_seq_lens_q" not in batch:
        return (labels[:, 1:] != IGNORE_INDEX).sum(dim=1).tolist()
    flat, bounds = labels.reshape(-1), torch.as_tensor(batch["cu_seq_lens_q"]).tolist()
    return [int((flat[a + 1:b] != IGNORE_INDEX).sum()) for a, b in zip(bounds, bounds[1:])]


# -- the refusal ------------------------------------------------------------------------------
def check_can_pack(model, implementation: str | None = None) -> None:
    """Raise ConfigError unless packed examples stay apart in `model` with `implementation`
    (default: `packed_implementation(model)`)."""
    base = _base(model)
    kind = getattr(base.config, "model_type", None) or type(base).__name__
    implementation = implementation or packed_implementation(model)
    if is_encoder_decoder(base.config):
        raise ConfigError(f"packing=True: {kind} is an encoder-decoder model; packing puts the "
                          "examples of a decoder-only model in one row. " + FIX)
    if not type(base).is_backend_compatible():
        raise ConfigError(f"packing=True: {kind}'s attention does not go through transformers' "
                          "AttentionInterface, so nothing would keep packed examples from "
                          "attending to each other. " + FIX)
    try:
        gap = isolation_gap(model, implementation)
    except Exception as exc:  # the attention refused this model's call
        raise ConfigError(f"packing=True: {kind} cannot run packed rows with {implementation} "
                          f"attention ({type(exc).__name__}: {exc}). " + FIX) from exc
    if gap > (1e-4 if base.dtype == torch.float32 else 3e-2):
        raise ConfigError(f"packing=True: {kind} with {implementation} attention lets packed "
                          f"examples attend to each other (an example's logits change by "
                          f"{gap:.2g} of their scale when another is packed before it). " + FIX)


@torch.no_grad()
def isolation_gap(model, implementation: str, lengths: tuple[int, int] = (5, 9)) -> float:
    """The largest change of the second example's logits when it is packed behind the first
    (with `implementation`) rather than run alone (with the model's own attention), relative to
    their scale; 0 when packing keeps them apart. In eval mode (no dropout)."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        vocab = _base(model).config.get_text_config().vocab_size
        generator = torch.Generator().manual_seed(0)
        first, second = (torch.randint(1, vocab, (n,), generator=generator).tolist() for n in lengths)
        batch = packing_collator()([{"input_ids": first}, {"input_ids": second}])
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items() if k != "labels"}
        with attention(model, implementation):
            packed = model(**batch, use_cache=False).logits[0, lengths[0]:].float()
        alone = model(input_ids=torch.tensor([second], device=device), use_cache=False).logits[0].float()
    finally:
        model.train(was_training)
    return float((packed - alone).abs().max() / (1.0 + alone.abs().max()))
