"""The training loss, computed only where it counts.

A causal LM's output layer (`lm_head`, hidden -> vocabulary) is the largest single matmul per
token for small models (SmolLM2-135M: 576 x 49,152 = 28M of its 135M weights), and the Hugging
Face loss runs it on every position, prompt and padding included, then throws most of the logits
away (labels -100). `LabelledLossTrainer` runs the model with its `lm_head` switched to identity
for that one forward call, keeps the hidden states at positions whose *next* token carries a
label, and applies the real `lm_head` and cross-entropy there only. The value equals the Hugging
Face loss (same shift, same sum / `num_items_in_batch` normalisation, same scaling across
devices): `tests/test_loss.py` checks loss and gradients against the model's own.

It is used where that is known to hold: decoder-only models whose forward is a plain
`lm_head(hidden)` (no logit soft-capping or scaling; `PLAIN_HEAD_MODELS`), an `lm_head` that is a
plain `nn.Linear` (not itself adapted), no FSDP/DeepSpeed sharding. Elsewhere the Trainer's own
loss runs unchanged.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..data.preprocessing import IGNORE_INDEX
from .distill import SOFT_IDS, SOFT_LOGP, SOFT_MASK, TEACHER_IDS, TEACHER_LOGP, soft_cross_entropy

# Causal LMs whose forward computes `logits = lm_head(hidden_states)` and the standard shifted
# cross-entropy, nothing else (Gemma soft-caps logits, Cohere/Granite scale them: not here).
PLAIN_HEAD_MODELS = frozenset({"llama", "mistral", "qwen2", "qwen3", "gpt2", "phi3", "smollm3",
                               "olmo2", "starcoder2"})


def labelled_head(model) -> nn.Linear | None:
    """The model's output layer when the labelled-only loss applies to it (see the module
    docstring), else None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return None
    if getattr(config, "model_type", None) not in PLAIN_HEAD_MODELS:
        return None
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if type(head) is not nn.Linear:  # an adapted (LoRA) or quantized head: leave it alone
        return None
    return head


@contextmanager
def identity_head(head: nn.Module):
    """Within the block, `head(x)` returns `x`: the model's "logits" are its last hidden states."""
    head.forward = lambda hidden: hidden  # instance attribute shadows nn.Linear.forward
    try:
        yield
    finally:
        del head.forward


def labelled_cross_entropy(hidden: torch.Tensor, labels: torch.Tensor, head: nn.Linear,
                           num_items_in_batch=None, soft: dict | None = None) -> torch.Tensor:
    """Cross-entropy of next-token predictions at labelled positions only.

    hidden: [batch, time, hidden] last hidden states; labels: [batch, time] with IGNORE_INDEX
    where no loss is wanted. The prediction at position t is scored against labels[t + 1], as in
    transformers' `ForCausalLMLoss`; the sum is divided by `num_items_in_batch` when given (the
    labelled tokens of the whole accumulated batch), else averaged. `soft`: distillation targets
    for some of those positions (`train/distill.py`: soft_ids, soft_logp, soft_mask, one row per
    labelled position in this order), scored against the teacher's distribution instead.
    """
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    picked = hidden[:, :-1][keep]  # [n_labelled, hidden]
    logits = F.linear(picked, head.weight, head.bias).float()
    if soft is not None and bool(soft[SOFT_MASK].any()):
        per_token = F.cross_entropy(logits, targets[keep], reduction="none")
        mask = soft[SOFT_MASK].to(per_token.device)
        distilled = soft_cross_entropy(torch.log_softmax(logits[mask], dim=-1),
                                       soft[SOFT_IDS].to(mask.device)[mask], soft[SOFT_LOGP].to(mask.device)[mask])
        per_token = per_token.masked_scatter(mask, distilled)
        loss = per_token.sum() if num_items_in_batch is not None else per_token.mean()
        if num_items_in_batch is None:
            return loss
    elif num_items_in_batch is None:
        return F.cross_entropy(logits, targets[keep], reduction="mean")
    else:
        loss = F.cross_entropy(logits, targets[keep], reduction="sum")
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch


class LabelledLossMixin:
    """A `transformers.Trainer` mixin: `compute_loss` with the labelled-only head (above)."""

    def _labelled_head(self):
        if not hasattr(self, "_cached_head"):
            head = labelled_head(self.accelerator.unwrap_model(self.model))
            sharded = getattr(self, "is_fsdp_enabled", False) or getattr(self, "is_deepspeed_enabled", False)
            if head is not None and (sharded or not self.model_accepts_loss_kwargs
                                     or self.label_smoother is not None or self.compute_loss_func is not None
                                     or (self.args.world_size > 1 and head.weight.requires_grad)):
                head = None
            self._cached_head = head
        return self._cached_head

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        for name in (TEACHER_IDS, TEACHER_LOGP):  # distillation targets reach the collator
            if name not in self._signature_columns:
                self._signature_columns.append(name)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        soft = {k: inputs.pop(k) for k in (SOFT_IDS, SOFT_LOGP, SOFT_MASK) if k in inputs} or None
        head = self._labelled_head()
        if head is None or return_outputs or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        labels = inputs.pop("labels")
        with identity_head(head):
            hidden = model(**inputs, use_cache=False).logits
        loss = labelled_cross_entropy(hidden, labels, head, num_items_in_batch, soft)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # as Trainer.compute_loss does
        return loss


def trainer_class(base):
    """`base` (Trainer or a subclass) with the labelled-only loss."""
    return type(f"Labelled{base.__name__}", (LabelledLossMixin, base), {})


def uses_labelled_loss(trainer) -> bool:
    """Whether `trainer` computes the output layer at labelled positions only (the FLOPs count
    of `meter.useful_flops` depends on it)."""
    return isinstance(trainer, LabelledLossMixin) and trainer._labelled_head() is not None
