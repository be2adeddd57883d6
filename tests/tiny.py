"""Tiny models built from configs (2 layers, hidden 32; 64 for GPT-2, whose 4-bit CPU kernels need
rows of at least one 64-wide quantization block) with the embedded model's tokenizer, saved
as ordinary model folders: they exercise the real loading, LoRA, training and generation code in
seconds on a CPU."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import (AutoTokenizer, BartConfig, BartForConditionalGeneration, GPT2Config,
                          GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM, T5Config, T5ForConditionalGeneration)

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
    elif kind == "qwen2":  # q/k/v biases, grouped-query heads
        cfg = Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
                          initializer_range=INIT)
        model = Qwen2ForCausalLM(cfg)
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


# -- a tiny seq2seq model that learns a task in seconds ----------------------------------------
# The embedded tokenizer cut down to its 17 special tokens and its 256 byte-level symbols (ids
# 0-272, unchanged; merges dropped): every text still tokenizes (one token per byte), digits keep
# their ids (and are single tokens in the full tokenizer too), and the model's embedding and
# softmax are 180x smaller than with the 49,152-token vocabulary. That is what lets a model built
# from a config learn a mapping in a few hundred steps on a CPU: one full-vocabulary step of the
# model below takes ~12x longer, dominated by the 49k-way softmax and its embedding's Adam update.
BYTE_VOCAB_SIZE = 273


def byte_tokenizer():
    """The embedded model's tokenizer restricted to its special tokens and 256 byte symbols."""
    import json
    import tempfile

    full = smol_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        full.save_pretrained(tmp)
        file = Path(tmp) / "tokenizer.json"
        spec = json.loads(file.read_text(encoding="utf-8"))
        spec["model"]["vocab"] = {s: i for s, i in spec["model"]["vocab"].items() if i < BYTE_VOCAB_SIZE}
        spec["model"]["merges"] = []
        spec["added_tokens"] = [t for t in spec["added_tokens"] if t["id"] < BYTE_VOCAB_SIZE]
        file.write_text(json.dumps(spec), encoding="utf-8")
        tok = AutoTokenizer.from_pretrained(tmp)
    sample = "Reverse 0123456789, naïve café!"
    if len(tok) != BYTE_VOCAB_SIZE or tok.decode(tok(sample)["input_ids"]) != sample:
        raise RuntimeError("the embedded tokenizer no longer has its byte symbols at ids 17-272")
    return tok


def build_byte_seq2seq(kind: str, path: Path) -> str:
    """A tiny encoder-decoder (2 + 2 layers, d_model 64, no dropout) over `byte_tokenizer()`.

    BART (learned absolute positions, init std 0.1) learns to reverse 3-6 digit strings to 100%
    held-out exact match in ~125 optimizer steps at learning rate 3e-3. T5 of the same size
    learns the same task far more slowly (cross-attention sees no positions; ~80% after 1,250
    steps), so the CI check uses BART and T5 is here for the recipe."""
    tok = byte_tokenizer()
    torch.manual_seed(0)
    if kind == "bart":
        cfg = BartConfig(vocab_size=BYTE_VOCAB_SIZE, d_model=64, encoder_layers=2, decoder_layers=2,
                         encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                         decoder_ffn_dim=128, max_position_embeddings=128, dropout=0.0,
                         attention_dropout=0.0, activation_dropout=0.0, pad_token_id=0,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         decoder_start_token_id=tok.eos_token_id, forced_eos_token_id=None,
                         init_std=0.1)
        model = BartForConditionalGeneration(cfg)
    elif kind == "t5":
        cfg = T5Config(vocab_size=BYTE_VOCAB_SIZE, d_model=64, d_ff=128, d_kv=16, num_layers=2,
                       num_heads=4, dropout_rate=0.0, pad_token_id=0, eos_token_id=tok.eos_token_id,
                       decoder_start_token_id=0)
        model = T5ForConditionalGeneration(cfg)
    else:
        raise ValueError(kind)
    return _save(model, tok, path)


def reversal_task(n_train: int, n_test: int, seed: int = 0, lengths: tuple[int, int] = (3, 6)):
    """(train rows, test rows) of {"prompt": digits, "completion": the digits reversed}, with
    `lengths[0]`-`lengths[1]` digits; no input occurs twice, so test inputs are never trained on."""
    import random

    rng = random.Random(seed)
    seen: set[str] = set()
    rows: list[dict] = []
    while len(rows) < n_train + n_test:
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(*lengths)))
        if digits not in seen:
            seen.add(digits)
            rows.append({"prompt": digits, "completion": digits[::-1]})
    return rows[:n_train], rows[n_train:]


# -- one tiny model per architecture the GGUF export writes -------------------------------------
# Hidden 64 (4 heads of 16, 2 KV heads), 2 layers, the embedded tokenizer's full vocabulary (real
# merges, chat template), and the traps of each architecture switched on: Qwen2's q/k/v biases,
# Qwen3's q/k norms, Gemma's sliding window over 8 tokens (shorter than every chat prompt, so the
# window and the per-layer pattern matter) and final-logit softcapping, Mistral's window (shorter
# than its context), untied output matrices for Mistral and Phi-3. Initialised at std 0.15 rather
# than INIT: at 0.4 the activations of these random models grow so large that llama.cpp's 8-bit
# quantization of activations (in its Q8_0 matrix products) alone moves logits by a quarter of
# their range, which says nothing about the file. Wider models get std 0.15 * sqrt(64 / hidden),
# which keeps the activations of the same size.
GGUF_INIT = 0.15
GGUF_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")


def build_for_gguf(kind: str, path: Path, hidden: int = 64) -> str:
    import transformers as tf

    tok = smol_tokenizer()
    common = dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=512, bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                  initializer_range=GGUF_INIT * (64 / hidden) ** 0.5)
    head = hidden // 4
    gemma = dict(head_dim=head, sliding_window=8, query_pre_attn_scalar=head)
    configs = {
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, dict(tie_word_embeddings=True)),
        "mistral": (tf.MistralConfig, tf.MistralForCausalLM,
                    dict(tie_word_embeddings=False, sliding_window=64)),
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, dict(tie_word_embeddings=True)),
        "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM, dict(tie_word_embeddings=True, head_dim=head)),
        "gemma2": (tf.Gemma2Config, tf.Gemma2ForCausalLM, gemma),
        "gemma3": (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM, dict(gemma, final_logit_softcapping=30.0)),
        "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM, dict(tie_word_embeddings=False)),
    }
    config_cls, model_cls, extra = configs[kind]
    torch.manual_seed(0)
    model = model_cls(config_cls(**{**common, **extra}))
    with torch.no_grad():  # norms and biases away from their 1 / 0 init, so a lost one shows
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.3)
            elif "norm" in name:
                param.add_(torch.randn_like(param) * 0.3)
    return _save(model, tok, path)


TRAIN_SCRIPT = Path(__file__).parent / "scripts" / "train_tiny.py"


def run_train_script(*args, check: bool = True):
    """`tests/scripts/train_tiny.py ARGS` in a subprocess (one thread, offline), as a resume test
    kills and restarts it; with `check`, a failure raises with the script's stderr."""
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(TRAIN_SCRIPT), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr[-3000:])
    return proc
