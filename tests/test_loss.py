"""The labelled-only loss (train/loss.py) equals the model's own loss, value and gradients,
while running the output layer only at labelled positions."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from finetuning_suite.train.loss import identity_head, labelled_cross_entropy, labelled_head


def _batch(vocab, pad_left=False):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    labels = ids.clone()
    labels[:, :5] = -100  # prompt
    labels[1, 9:] = -100  # padding of a shorter row
    mask[1, 9:] = 0
    labels[2, :8] = -100
    return ids, mask, labels


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("lora", [True, False])
def test_labelled_loss_equals_model_loss(kind, lora, tiny_models):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_models[kind], dtype=torch.float32)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                 init_lora_weights=False))
    model.eval()  # no dropout (GPT-2 has some): the two passes must see the same network
    ids, mask, labels = _batch(model.config.vocab_size)
    n_items = int((labels[:, 1:] != -100).sum())

    model.zero_grad()
    ref = model(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=n_items).loss
    ref.backward()
    ref_grads = _grads(model)

    head = labelled_head(model)
    assert head is not None
    model.zero_grad()
    with identity_head(head):
        hidden = model(input_ids=ids, attention_mask=mask).logits
    assert hidden.shape[-1] == model.get_input_embeddings().weight.shape[1]  # hidden, not vocab
    ours = labelled_cross_entropy(hidden, labels, head, n_items)
    ours.backward()
    grads = _grads(model)

    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    assert grads.keys() == ref_grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-5, atol=1e-7, msg=name)
    # the head works again after the block
    assert model(input_ids=ids).logits.shape[-1] == model.config.vocab_size


def test_not_used_where_it_would_be_wrong(tiny_models):
    t5 = __import__("transformers").AutoModelForSeq2SeqLM.from_pretrained(tiny_models["t5"])
    assert labelled_head(t5) is None


def test_trainer_uses_it_and_trains_the_same(tiny_llama, tmp_path):
    """Two short runs, the Trainer's loss vs ours: same per-step losses and adapter."""
    import json

    from conftest import fast_trainer
    from safetensors.torch import load_file

    from finetuning_suite import FineTuner

    rows = [{"prompt": f"Code for item {i}?", "completion": f"Item {i} is coded Z{i * 7 % 13}."}
            for i in range(16)]
    results = {}
    for labelled in (False, True):
        cfg = fast_trainer(max_steps=3, bf16=False)  # fp32: equal to 1e-5, not to bf16 rounding
        cfg.labelled_loss = labelled
        ft = FineTuner(model_id=tiny_llama, device="cpu", dataset_name=rows, max_length=8,
                       trainer_config=cfg, self_replay=False, lora_dropout=0.0)
        out = tmp_path / str(labelled)
        ft.train(out)
        losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                  if "loss" in r]
        results[labelled] = (losses, load_file(str(out / "adapter_model.safetensors")))
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-5)
    a, b = results[True][1], results[False][1]
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def test_default_trainer_has_the_labelled_loss(tiny_llama, tmp_path):
    from transformers import AutoTokenizer

    from finetuning_suite import DefaultTrainerConfig
    from finetuning_suite.train.loss import LabelledLossMixin

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    cfg = DefaultTrainerConfig()
    args = cfg.training_arguments(output_dir=str(tmp_path), device="cpu")
    trainer = cfg.build_trainer(model=model, args=args, tokenizer=AutoTokenizer.from_pretrained(tiny_llama),
                                train_dataset=None)
    assert isinstance(trainer, LabelledLossMixin) and trainer._labelled_head() is model.lm_head
    cfg.labelled_loss = False
    assert not isinstance(cfg.build_trainer(model=model, args=args, tokenizer=None, train_dataset=None),
                          LabelledLossMixin)
