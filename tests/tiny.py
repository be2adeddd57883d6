"""Tiny models built from configs (2 layers, hidden 32; 64 for GPT-2, whose 4-bit CPU kernels need
rows of at least one 64-wide quantization block) with the embedded model's tokenizer, saved
as ordinary model folders: they exercise the real loading, LoRA, training and generation code in
seconds on a CPU."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import (AutoTokenizer, BartConfig, BartForConditionalGeneration, GPT2Config,
                          GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, T5Config,
                          T5ForConditionalGeneration)

from finetuning_suite.model.embedded import embedded_model_dir


# Larger than the usual 0.02: with a 49k vocabulary tied to 32-wide embeddings, a 0.02 init caps
# every logit near 0.6, so no adapter can visibly lower the loss in a few steps.
INIT = 0.4


def smol_tokenizer():
    # FINETUNING_SUITE_TEST_TOKENIZER: a folder holding just the tokenizer, for machines without
    # the embedded model (the GPU check carries the tokenizer files, not the 98 MB GGUF).
    folder = os.environ.get("FINETUNING_SUITE_TEST_TOKENIZER") or embedded_model_dir()
    return AutoTokenizer.from_pretrained(folder)


def gpt2_style_tokenizer():
    """A base-model tokenizer like GPT-2's: no chat template, no pad token."""
    tok = smol_tokenizer()
    tok.chat_template = None
    tok.pad_token = None
    return tok


def _save(model, tokenizer, path: Path) -> str:
    torch.manual_seed(0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def build(kind: str, path: Path) -> str:
    torch.manual_seed(0)
    tok = gpt2_style_tokenizer() if kind == "gpt2" else smol_tokenizer()
    vocab = len(tok)
    if kind == "llama":
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
                          initializer_range=INIT)
        model = LlamaForCausalLM(cfg)
    elif kind == "gpt2":
        cfg = GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=2, n_positions=1024,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         initializer_range=INIT)
        model = GPT2LMHeadModel(cfg)
    elif kind == "t5":
        cfg = T5Config(vocab_size=vocab, d_model=32, d_ff=64, d_kv=16, num_layers=2, num_heads=2,
                       pad_token_id=0, eos_token_id=tok.eos_token_id, decoder_start_token_id=0)  # T5 already inits embeddings at std 1
        model = T5ForConditionalGeneration(cfg)
    elif kind == "bart":
        cfg = BartConfig(vocab_size=vocab, d_model=32, encoder_layers=2, decoder_layers=2,
                         encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                         decoder_ffn_dim=64, max_position_embeddings=256, pad_token_id=0,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         decoder_start_token_id=tok.eos_token_id, forced_eos_token_id=None,
                         init_std=INIT)
        model = BartForConditionalGeneration(cfg)
    else:
        raise ValueError(kind)
    return _save(model, tok, path)
