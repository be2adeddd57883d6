"""A llama.cpp GGUF file from a merged Llama-architecture model, written with the `gguf`
package's `GGUFWriter` (the library llama.cpp's own `convert_hf_to_gguf.py` uses).

What goes in, following that converter's conventions for `LlamaForCausalLM`:

- tensors renamed by gguf's `TensorNameMap` for `MODEL_ARCH.LLAMA` (`model.layers.3.self_attn.
  q_proj.weight` -> `blk.3.attn_q.weight`, ...); the output matrix is left out when it is tied
  to the token embedding, which is how readers recognise tied weights;
- the query and key projections permuted per head from the Hugging Face rotary layout
  (rotate halves) to llama.cpp's (rotate adjacent pairs); transformers' GGUF loader undoes it;
- F16: every matrix in float16; Q8_0: every matrix whose rows are whole 32-value blocks
  quantized with `gguf.quants.quantize` (an 8-bit value per weight and one float16 scale per 32
  weights), any other matrix in F16. 1-D tensors (norms, biases) stay F32 in both;
- the hyperparameters llama.cpp reads (context length, widths, heads, KV heads, head size, rope
  base, RMS-norm epsilon, vocabulary size);
- the tokenizer as trained: byte-level BPE ("gpt2" in llama.cpp terms) tokens, token types
  (added special tokens as CONTROL), merges, BOS/EOS/UNK/PAD ids, whether BOS/EOS are added,
  the pre-tokenizer name that reproduces the tokenizer's own splitting, and the training chat
  template as `tokenizer.chat_template`.

Only what this package can check is written: Llama architecture, default or linear rope, no MLP
biases, a fast tokenizer with a byte-level BPE model. Anything else is refused up front
(`support_problems`) with the reason; the merged folder is the way out for those models
(llama.cpp's `convert_hf_to_gguf.py` reads it).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

GGUF_TYPES = ("f16", "q8_0")
Q8_0_BLOCK = 32

# The tokenizers pre-tokenizer layouts we can name for llama.cpp (`tokenizer.ggml.pre`): plain
# GPT-2 byte-level splitting, SmolLM's (digits split first), Llama 3's regex.
_LLAMA3_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}"
                 "\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")


def _architecture(config) -> str:
    archs = getattr(config, "architectures", None) or []
    return f"{config.model_type} ({', '.join(archs)})" if archs else str(config.model_type)


def _tokenizer_spec(tokenizer) -> dict | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return json.loads(backend.to_str()) if backend is not None else None


def pre_tokenizer_name(spec: dict) -> str | None:
    """llama.cpp's name for the tokenizer's pre-tokenizer, or None when it is not one we know."""
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if (kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits")
            and parts[1].get("use_regex", True)):
        return "smollm"
    if (kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True)
            and (parts[0].get("pattern") or {}).get("Regex") == _LLAMA3_SPLIT):
        return "llama-bpe"
    return None


def support_problems(config, tokenizer) -> list[tuple[str, object, str]]:
    """Why this model cannot be written as GGUF here, as (name, value, fix) triples; empty when
    it can."""
    way_out = ("merged export (gguf=None) works for it; convert the merged folder with "
               "llama.cpp's convert_hf_to_gguf.py.")
    if getattr(config, "model_type", None) != "llama":
        return [("gguf", _architecture(config), "GGUF export is written for Llama-architecture "
                 "models (LlamaForCausalLM, e.g. the embedded SmolLM2) only; " + way_out)]
    problems = []
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "linear"):
        problems.append(("gguf", f"rope_type={rope_type!r}", "only default and linear rope "
                         "scaling are written; " + way_out))
    if getattr(config, "mlp_bias", False):
        problems.append(("gguf", "mlp_bias=True", "MLP biases are not written; " + way_out))
    if getattr(config, "hidden_act", "silu") != "silu":
        problems.append(("gguf", f"hidden_act={config.hidden_act!r}", "llama.cpp's Llama uses "
                         "SiLU; " + way_out))
    spec = _tokenizer_spec(tokenizer)
    model_type = (spec or {}).get("model", {}).get("type")
    if spec is None or model_type != "BPE":
        problems.append(("gguf", f"tokenizer {type(tokenizer).__name__} ({model_type or 'not a fast tokenizer'})",
                         "only byte-level BPE tokenizers (GPT-2 style, as SmolLM2's) are written; " + way_out))
    elif pre_tokenizer_name(spec) is None:
        problems.append(("gguf", f"pre_tokenizer {spec.get('pre_tokenizer')}", "this pre-tokenizer "
                         "has no llama.cpp name this exporter knows; " + way_out))
    elif not spec["model"].get("merges"):
        problems.append(("gguf", "tokenizer without BPE merges", "llama.cpp needs the merges; " + way_out))
    if len(tokenizer) > getattr(config, "vocab_size", 0):
        problems.append(("gguf", f"{len(tokenizer)} tokens", f"the model has only "
                         f"{config.vocab_size} embeddings (resize them first); " + way_out))
    return problems


# -- tensors -------------------------------------------------------------------------------
def permute_rotary(weights: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """Rows of a query/key projection from the Hugging Face rotary layout (each head's first and
    second halves rotate together) to llama.cpp's (adjacent pairs rotate together)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    shape = weights.shape
    return (weights.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:])
            .swapaxes(1, 2).reshape(shape))


def gguf_tensors(model, qtype: str):
    """(gguf name, array, raw quantization type or None) for every tensor of `model`."""
    import gguf

    config = model.config
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # written once, as token_embd; a reader ties output to it
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"no GGUF name for tensor {hf_name!r} of this Llama model")
        data = tensor.detach().to("cpu", torch.float32).numpy()
        if ".attn_q." in name:
            data = permute_rotary(data, n_head, n_head)
        elif ".attn_k." in name:
            data = permute_rotary(data, n_head, n_kv)
        if data.ndim <= 1:
            yield name, np.ascontiguousarray(data, dtype=np.float32), None
        elif qtype == "q8_0" and data.shape[-1] % Q8_0_BLOCK == 0:
            quantized = gguf.quants.quantize(np.ascontiguousarray(data), gguf.GGMLQuantizationType.Q8_0)
            yield name, quantized, gguf.GGMLQuantizationType.Q8_0
        else:
            yield name, np.ascontiguousarray(data, dtype=np.float16), None


# -- metadata ------------------------------------------------------------------------------
def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _rope_theta(config) -> float:
    rope = getattr(config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta") if isinstance(rope, dict) else None
    return float(theta if theta is not None else getattr(config, "rope_theta", 10000.0))


def add_hyperparameters(writer, config) -> None:
    import gguf

    n_head = config.num_attention_heads
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(n_head))
    writer.add_head_count_kv(int(getattr(config, "num_key_value_heads", None) or n_head))
    head_dim = _head_dim(config)
    writer.add_rope_dimension_count(int(head_dim))
    if head_dim != config.hidden_size // n_head:
        writer.add_key_length(int(head_dim))
        writer.add_value_length(int(head_dim))
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(int(config.vocab_size))
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))


def token_list(tokenizer, n_vocab: int) -> tuple[list[str], list[int]]:
    """Tokens in id order as the tokenizer spells them (byte-level symbols) and their llama.cpp
    types: added special tokens CONTROL, other added tokens USER_DEFINED, ids without a token
    UNUSED placeholders (`[PAD<id>]`, as llama.cpp's converter writes them)."""
    import gguf

    reverse = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def adds_special_tokens(tokenizer) -> tuple[bool, bool]:
    """(adds BOS, adds EOS) when encoding plain text, as the tokenizer really does."""
    with_special = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id is not None and len(with_special) > len(plain) \
        and with_special[0] == tokenizer.bos_token_id
    eos = tokenizer.eos_token_id is not None and len(with_special) > len(plain) \
        and with_special[-1] == tokenizer.eos_token_id
    return bool(bos), bool(eos)


def add_tokenizer(writer, tokenizer, tokenizer_dir: Path, n_vocab: int) -> None:
    """The tokenizer; merges and special-token ids are read from the saved tokenizer folder by
    gguf's `SpecialVocab` (as llama.cpp's converter does), the rest from the tokenizer object."""
    import gguf

    spec = _tokenizer_spec(tokenizer)
    if len(tokenizer) > n_vocab:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model only "
                         f"{n_vocab} embeddings")
    tokens, types = token_list(tokenizer, n_vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(spec))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(tokenizer_dir, load_merges=True, n_vocab=n_vocab)
    if not special.merges:
        raise ValueError(f"no BPE merges found in {tokenizer_dir}")
    # the ids as the tokenizer object has them (the saved files say the same; this is explicit)
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if isinstance(token_id, int) and 0 <= token_id < n_vocab:
            special.special_token_ids[kind] = token_id
    special.add_special_token["bos"], special.add_special_token["eos"] = adds_special_tokens(tokenizer)
    special.chat_template = getattr(tokenizer, "chat_template", None) or None
    special.add_to_gguf(writer, quiet=True)


def write_gguf(model, tokenizer, tokenizer_dir: Path, file: Path, qtype: str, name: str) -> Path:
    """Write `model` (merged, Llama) and `tokenizer` as one GGUF file of type `qtype`."""
    import gguf

    file = Path(file)
    file_type = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[qtype]
    config = model.config
    writer = gguf.GGUFWriter(str(file), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name)
        writer.add_file_type(int(file_type))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        add_hyperparameters(writer, config)
        add_tokenizer(writer, tokenizer, Path(tokenizer_dir), int(config.vocab_size))
        for tensor_name, data, raw_dtype in gguf_tensors(model, qtype):
            writer.add_tensor(tensor_name, data, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return file
