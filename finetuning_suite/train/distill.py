"""Self-replay as distillation: replay rows are trained towards the base model's own next-token
distribution, not only its greedy answer.

A replay row is the base model's answer to a general prompt. Plain cross-entropy on it pushes
the model to say that answer with certainty, which is itself a change; the base model's whole
distribution at each answer position says more (how sure it was, what else it would say) and
asks for no change at all. So, before training, `add_teacher_targets` records the base model's
top-`TOP_K` log-probabilities at every labelled position of the replay rows (a forward pass
over a few dozen short rows; for LoRA the model before training *is* the base: the adapter
starts at zero), and the labelled-only loss (`train/loss.py`) scores those positions with the
cross-entropy against that distribution (renormalised over its top k), every other position
with the usual cross-entropy. Precomputing the targets needs no second model in memory, works
for LoRA, QLoRA and full fine-tuning alike, and costs nothing per training step.

`TeacherCollator` pads the targets into flat tensors aligned with the labelled positions of the
batch, in the order the loss picks them (row by row, left to right; a packed row's examples one
after the other, `train/packing.py`).
"""
from __future__ import annotations

import torch

TEACHER_IDS, TEACHER_LOGP = "teacher_ids", "teacher_logp"
SOFT_IDS, SOFT_LOGP, SOFT_MASK = "soft_ids", "soft_logp", "soft_mask"
TOP_K = 16
WEIGHT = 1.0          # the distilled positions' loss, relative to a task token's
ALL_POSITIONS = False  # distil the replay prompt's positions too, not only the answer's


def add_teacher_targets(model, dataset, device, k: int = TOP_K):
    """`dataset` (tokenized rows with labels) plus the model's top-k next-token log-probs at
    each labelled position: `teacher_ids` / `teacher_logp`, one [k] list per labelled position."""
    from ..data.preprocessing import IGNORE_INDEX

    was_training = model.training
    model.eval()
    ids_col, logp_col = [], []
    try:
        with torch.inference_mode():
            for row in dataset:
                ids = torch.tensor([row["input_ids"]], device=device)
                logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
                keep = torch.tensor(row["labels"][1:], device=device) != IGNORE_INDEX
                top = torch.log_softmax(logits[keep], dim=-1).topk(k, dim=-1)
                ids_col.append(top.indices.tolist())
                logp_col.append(top.values.tolist())
    finally:
        model.train(was_training)
    return dataset.add_column(TEACHER_IDS, ids_col).add_column(TEACHER_LOGP, logp_col)


def without_targets(dataset):
    """Rows that train on their labels alone, in the columns a distilled dataset has."""
    empty = [[] for _ in range(len(dataset))]
    return dataset.add_column(TEACHER_IDS, empty).add_column(TEACHER_LOGP, list(empty))


class TeacherCollator:
    """Wraps a collator: rows' teacher targets become `soft_ids` / `soft_logp` [n, k] and
    `soft_mask` [n], n = the batch's labelled positions in the loss's order."""

    def __init__(self, collate, k: int = TOP_K):
        self.collate, self.k = collate, k

    def __call__(self, features):
        teacher = [(f.pop(TEACHER_IDS, None) or [], f.pop(TEACHER_LOGP, None) or []) for f in features]
        batch = self.collate(features)
        from .packing import scored_positions

        ids, logp, mask = [], [], []
        for n, (t_ids, t_logp) in zip(scored_positions(batch), teacher, strict=True):
            if t_ids and len(t_ids) == n:
                ids += t_ids
                logp += t_logp
                mask += [True] * n
            else:  # a task row (or a replay row whose positions no longer match): hard labels
                ids += [[0] * self.k] * n
                logp += [[0.0] * self.k] * n
                mask += [False] * n
        batch[SOFT_IDS] = torch.tensor(ids, dtype=torch.long).reshape(-1, self.k)
        batch[SOFT_LOGP] = torch.tensor(logp, dtype=torch.float32).reshape(-1, self.k)
        batch[SOFT_MASK] = torch.tensor(mask, dtype=torch.bool)
        return batch


def soft_cross_entropy(logp: torch.Tensor, soft_ids: torch.Tensor, soft_logp: torch.Tensor) -> torch.Tensor:
    """Per position: -sum_k p_teacher(k) log p_student(k), p_teacher renormalised over its top k.
    logp: [n, vocab] student log-probs; soft_ids, soft_logp: [n, k]."""
    weights = torch.softmax(soft_logp.to(logp.device), dim=-1)
    return -WEIGHT * (weights * logp.gather(1, soft_ids.to(logp.device))).sum(dim=-1)
