"""Padding-free packing (`train/packing.py`): packed batches train exactly as the examples do one
by one, and models that could not keep packed examples apart are refused.

Every expected value comes from the unpacked reference: each example run alone through the
model's own attention (no padding, no packing), or the same run without packing."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from finetuning_suite import DefaultTrainerConfig, FineTuner
from finetuning_suite.errors import ConfigError
from finetuning_suite.train import packing
from finetuning_suite.train.distill import TEACHER_IDS, TEACHER_LOGP, TOP_K
from finetuning_suite.train.meter import read_metrics

LENGTHS = (5, 17, 9, 30, 1)
TOL = 1e-5


def examples(vocab: int, lengths=LENGTHS, seed: int = 1) -> list[dict]:
    """Token rows with a prompt (label -100) of about a third of each example."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in lengths:
        ids = torch.randint(1, vocab, (n,), generator=g).tolist()
        cut = n // 3
        rows.append({"input_ids": ids, "labels": [-100] * cut + ids[cut:]})
    return rows


def load(path: str, implementation: str = "sdpa"):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=implementation)
    return model.eval()  # no dropout: GPT-2's is on by default


def grads(model) -> dict:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def unpacked_reference(model, rows):
    """Loss (sum over the examples / their labelled count, as the Trainer normalises a batch)
    and gradients, every example run alone."""
    n_items = sum(sum(t != -100 for t in r["labels"][1:]) for r in rows)
    loss = 0.0
    for r in rows:
        out = model(input_ids=torch.tensor([r["input_ids"]]), labels=torch.tensor([r["labels"]]),
                    num_items_in_batch=n_items, use_cache=False)
        out.loss.backward()
        loss += out.loss.item()
    return loss, grads(model), n_items


def assert_close(reference, got):
    (loss0, g0), (loss1, g1) = reference, got
    assert abs(loss0 - loss1) <= TOL * max(1.0, abs(loss0))
    assert g0.keys() == g1.keys()
    worst = max(float((g0[n] - g1[n]).abs().max()) for n in g0)
    assert worst <= TOL, worst


def test_the_collator_puts_a_batch_in_one_row_with_boundaries():
    batch = packing.packing_collator()([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
                                        {"input_ids": [8, 9], "labels": [8, 9]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9]]  # no example learns the next's start
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 5] and batch["max_length_q"] == 3
    assert "attention_mask" not in batch
    assert packing.scored_positions(batch) == [2, 1]


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("implementation", [packing.PACKED_SDPA, "sdpa", "eager"])
def test_packed_loss_and_gradients_equal_the_examples_run_alone(request, kind, implementation):
    """packed_sdpa always; transformers' sdpa and eager only in the setting where they isolate
    packed rows at all (position ids, no attention mask, use_cache=False)."""
    own = "sdpa" if implementation == packing.PACKED_SDPA else implementation
    model = load(request.getfixturevalue(f"tiny_{kind}"), own)
    rows = examples(model.config.vocab_size)
    loss0, g0, n_items = unpacked_reference(model, rows)

    batch = packing.packing_collator()(rows)
    assert int((batch["labels"][:, 1:] != -100).sum()) == n_items  # the Trainer's count
    with packing.attention(model, implementation):
        out = model(**batch, num_items_in_batch=n_items, use_cache=False)
        out.loss.backward()
    assert model.config._attn_implementation == own  # restored
    assert_close((loss0, g0), (out.loss.item(), grads(model)))


def test_packed_sdpa_keeps_a_sliding_window():
    """Mistral attends within a window of 8 tokens: examples longer than it get the same band."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(vocab_size=1000, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             sliding_window=8, attn_implementation="sdpa")).eval()
    rows = examples(1000)
    loss0, g0, n_items = unpacked_reference(model, rows)
    with packing.attention(model, packing.PACKED_SDPA):
        out = model(**packing.packing_collator()(rows), num_items_in_batch=n_items, use_cache=False)
        out.loss.backward()
    assert_close((loss0, g0), (out.loss.item(), grads(model)))


def test_packed_sdpa_with_gradient_checkpointing_and_two_packed_rows(tiny_llama):
    """Checkpointing replays each layer inside backward: the boundary keywords reach the replay.
    Two rows: cu_seq_lens index the rows flattened (the flash-attention convention)."""
    model = load(tiny_llama)
    rows = examples(model.config.vocab_size, lengths=(6, 11, 8, 9))
    loss0, g0, n_items = unpacked_reference(model, rows)
    first, second = packing.packing_collator()(rows[:2]), packing.packing_collator()(rows[2:])
    batch = {k: torch.cat([first[k], second[k]]) for k in ("input_ids", "labels", "position_ids")}
    batch["cu_seq_lens_q"] = batch["cu_seq_lens_k"] = torch.tensor([0, 6, 17, 25, 34], dtype=torch.int32)
    model.gradient_checkpointing_enable()
    model.train()  # checkpointing acts in train mode; tiny Llama has no dropout
    with packing.attention(model, packing.PACKED_SDPA):
        out = model(**batch, num_items_in_batch=n_items, use_cache=False)
        out.loss.backward()
    assert_close((loss0, g0), (out.loss.item(), grads(model)))


def _trainer(path, tmp_path, packed: bool, dataset):
    from transformers import AutoTokenizer

    config = DefaultTrainerConfig(packing=packed, output_dir=str(tmp_path), report_to="none",
                                  per_device_train_batch_size=len(dataset), use_cpu=True)
    model = load(path)
    args = config.training_arguments(output_dir=str(tmp_path), device="cpu")
    return config.build_trainer(model=model, args=args, tokenizer=AutoTokenizer.from_pretrained(path),
                                train_dataset=dataset)


def test_a_packed_trainer_step_equals_the_padded_one_with_distillation_targets(tiny_llama, tmp_path):
    """The package's own step (labelled-only loss, self-replay's teacher targets aligned by
    `TeacherCollator`) gives the same loss and gradients packed as padded."""
    import datasets

    from finetuning_suite.train.loss import uses_labelled_loss

    rows = examples(1000, lengths=(7, 12, 4, 20))
    g = torch.Generator().manual_seed(3)
    for i, r in enumerate(rows):  # rows 1 and 3 carry teacher targets, as replay rows do
        n = sum(t != -100 for t in r["labels"][1:]) if i % 2 else 0
        r[TEACHER_IDS] = torch.randint(0, 1000, (n, TOP_K), generator=g).tolist()
        r[TEACHER_LOGP] = torch.randn(n, TOP_K, generator=g).log_softmax(-1).tolist()
    dataset = datasets.Dataset.from_list(rows)
    results = []
    for packed in (False, True):
        trainer = _trainer(tiny_llama, tmp_path / str(packed), packed, dataset)
        assert uses_labelled_loss(trainer)
        batch = trainer.data_collator([dict(r) for r in rows])
        assert batch["input_ids"].shape[0] == (1 if packed else len(rows))
        n_items = int((batch["labels"][:, 1:] != -100).sum())
        loss = trainer.training_step(trainer.model, batch, n_items)
        results.append((loss.item(), grads(trainer.model)))
        assert trainer.model.config._attn_implementation == "sdpa"  # only the step runs packed
    assert_close(*results)


@pytest.mark.parametrize("bf16, tol", [(False, TOL), (True, 2e-3)])
def test_packed_run_has_the_unpacked_runs_per_step_losses(bf16, tol, tiny_llama, tmp_path, monkeypatch):
    """FineTuner(packing=True) end to end: 3 optimizer steps, same data order; the model answers
    afterwards with its own attention. fp32 to TOL; under bf16 autocast, to bf16's rounding
    (the packed and padded matmuls round differently: ~3e-4 measured)."""
    from finetuning_suite.train import trainer_config

    shapes = []
    make = trainer_config.packing_collator

    def spying_collator():
        collate = make()

        def collate_and_record(features):
            batch = collate(features)
            shapes.append(tuple(batch["input_ids"].shape))
            return batch
        return collate_and_record

    monkeypatch.setattr(trainer_config, "packing_collator", spying_collator)
    rows = [{"prompt": "word " * (3 + 5 * i % 23), "completion": "answer " * (1 + i % 4)} for i in range(12)]
    losses, tokens = {}, {}
    for packed in (False, True):
        ft = FineTuner(model_id=tiny_llama, device="cpu", dataset_name=rows, self_replay=False,
                       retention_probe=False, lora_dropout=0.0, eval_fraction=0, packing=packed,
                       max_steps=3, per_device_train_batch_size=4, learning_rate=5e-3,
                       logging_steps=1, save_strategy="no", warmup_steps=0, report_to=["none"], bf16=bf16)
        ft.train(str(tmp_path / str(packed)))
        logged = [r for r in read_metrics(tmp_path / str(packed)) if "loss" in r]
        losses[packed] = [r["loss"] for r in logged]
        tokens[packed] = logged[-1]["num_input_tokens_seen"]
        assert ft.model.get_base_model().config._attn_implementation == "sdpa"
        assert isinstance(ft.generate("hello", max_length=3), str)
    assert len(losses[True]) == 3 and shapes and all(s[0] == 1 for s in shapes)
    assert losses[True] == pytest.approx(losses[False], rel=tol, abs=tol)
    assert tokens[True] == tokens[False]  # every packed token counted as real, none as padding


# -- refusals -------------------------------------------------------------------------------
def test_an_encoder_decoder_is_refused(tiny_t5, tmp_path):
    rows = [{"prompt": f"say {i}", "completion": str(i)} for i in range(8)]
    ft = FineTuner(model_id=tiny_t5, device="cpu", dataset_name=rows, packing=True, max_steps=1,
                   eval_fraction=0, save_strategy="no", report_to=["none"])
    with pytest.raises(ConfigError, match=r"packing=True: t5 is an encoder-decoder.*packing=False"):
        ft.train(str(tmp_path / "run"))


def test_an_attention_outside_the_interface_is_refused():
    from transformers import BloomConfig, BloomForCausalLM

    model = BloomForCausalLM(BloomConfig(vocab_size=64, hidden_size=32, n_layer=1, n_head=2))
    with pytest.raises(ConfigError, match=r"bloom's attention does not go through .*AttentionInterface.*packing=False"):
        packing.check_can_pack(model)


def test_an_attention_packed_sdpa_cannot_serve_is_refused():
    """Gemma 2 soft-caps its attention logits, which SDPA cannot (transformers itself refuses
    sdpa for it); the refusal carries transformers' reason."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    model = Gemma2ForCausalLM(Gemma2Config(vocab_size=64, hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=1, num_attention_heads=2,
                                           num_key_value_heads=1, head_dim=16))
    with pytest.raises(ConfigError, match=r"gemma2 cannot run packed rows with packed_sdpa attention "
                                          r"\(ValueError: .*scaled_dot_product_attention.*packing=False"):
        packing.check_can_pack(model)
    assert model.config._attn_implementation == "eager"  # left as it was


def test_an_attention_that_leaks_across_examples_is_refused(tiny_llama):
    """The probe itself: an attention that ignores the boundaries (plain causal SDPA over the
    row) passes every static check and is still caught."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def leaky(module, query, key, value, attention_mask, **kwargs):
        return sdpa_attention_forward(module, query, key, value, None, **kwargs)

    AttentionInterface.register("leaky_sdpa_test", leaky)
    model = load(tiny_llama)
    packing.check_can_pack(model)  # packed_sdpa: accepted
    with pytest.raises(ConfigError, match=r"llama with leaky_sdpa_test attention lets packed examples attend"):
        packing.check_can_pack(model, "leaky_sdpa_test")
    assert model.config._attn_implementation == "sdpa"


def test_packing_is_an_sft_option():
    with pytest.raises(ConfigError, match="packing=True packs sft batches"):
        DefaultTrainerConfig(stage="dpo", packing=True)
    assert "packing=True" in repr(DefaultTrainerConfig(packing=True))
