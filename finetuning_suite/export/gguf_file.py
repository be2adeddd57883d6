"""A llama.cpp GGUF file from a merged model, written with the `gguf` package's `GGUFWriter`
(the library llama.cpp's own `convert_hf_to_gguf.py` writes with; why not that converter itself:
`gguf_arch`).

What goes in, following that converter's conventions:

- tensors renamed by gguf's `TensorNameMap` for the llama.cpp architecture, and changed as
  `gguf_arch` says (Llama's q/k permutation, Gemma's norm + 1); the output matrix is left out
  when it is tied to the token embedding, which is how llama.cpp recognises tied weights;
- F32 / F16 / BF16: every matrix in that type; Q8_0: every matrix whose rows are whole 32-value
  blocks quantized with `gguf.quants.quantize` (an 8-bit value per weight and one float16 scale
  per 32 weights; the same bytes llama.cpp's own quantizer writes from an F32 file, checked in
  the tests), any other matrix in F16. 1-D tensors (norms, biases) stay F32;
- the hyperparameters llama.cpp reads for the architecture (`gguf_arch.add_hyperparameters`);
- the tokenizer as trained: byte-level BPE ("gpt2" in llama.cpp terms) tokens, token types
  (added special tokens as CONTROL), merges, BOS/EOS/UNK/PAD ids, whether BOS/EOS are added,
  the pre-tokenizer name that reproduces the tokenizer's own splitting, and the training chat
  template as `tokenizer.chat_template`.

Only what this package can check is written: the architectures of `gguf_arch`, a fast
tokenizer with a byte-level BPE model. Anything else is refused up front (`support_problems`)
with the reason; the merged folder is the way out for those models. The k-quants (Q4_K_M, ...)
are made from an F16 file of this writer by llama.cpp's own quantizer (`gguf_quantize`).
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np

from . import gguf_arch

logger = logging.getLogger(__name__)

WRITER_TYPES = ("f32", "f16", "bf16", "q8_0")  # written here; the k-quants by `gguf_quantize`
Q8_0_BLOCK = 32

# The tokenizers pre-tokenizer layouts we can name for llama.cpp (`tokenizer.ggml.pre`): plain
# GPT-2 byte-level splitting, SmolLM's (digits split first), Llama 3's regex, Qwen2's (the Llama 3
# regex with single digits; transformers' Qwen2Tokenizer installs it).
_LLAMA3_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}"
                 "\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace("\\p{N}{1,3}", "\\p{N}")


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
    if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        regex = (parts[0].get("pattern") or {}).get("Regex")
        return {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}.get(regex)
    return None


def support_problems(config, tokenizer) -> list[tuple[str, object, str]]:
    """Why this model cannot be written as GGUF here, as (name, value, fix) triples; empty when
    it can."""
    way_out = gguf_arch.WAY_OUT
    problems = gguf_arch.problems(config)
    if problems and problems[0][1] == gguf_arch.architecture(config):
        return problems  # an architecture we do not write: nothing else to say
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


# -- tensors ------------------------------------------------------------------------------
def encoded(name: str, data: np.ndarray, qtype: str):
    """(name, array, raw GGML type or None) for one float32 tensor in the file type `qtype`."""
    import gguf

    if data.ndim <= 1 or qtype == "f32":
        return name, np.ascontiguousarray(data, dtype=np.float32), None
    if qtype == "q8_0" and data.shape[-1] % Q8_0_BLOCK == 0:
        q8 = gguf.GGMLQuantizationType.Q8_0
        return name, gguf.quants.quantize(np.ascontiguousarray(data), q8), q8
    if qtype == "bf16":
        bf16 = gguf.GGMLQuantizationType.BF16
        return name, gguf.quants.quantize(np.ascontiguousarray(data), bf16), bf16
    return name, np.ascontiguousarray(data, dtype=np.float16), None


# -- metadata ------------------------------------------------------------------------------
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


_PHI3_TOKENS = ("</s>", "<unk>", "<s>", "<|endoftext|>")


def file_name_field(name: str, tokenizer) -> str:
    """`general.name` for the file. llama.cpp sets Phi-3 token attributes on `</s>`, `<unk>`,
    `<s>` and `<|endoftext|>` when the name contains "phi3" or "phi-3" (llama-vocab.cpp, by
    name, not architecture) and fails to load a vocabulary that lacks one of them
    ("unordered_map::at"); such a name gets "phi_3" instead."""
    vocab = tokenizer.get_vocab()
    if all(t in vocab for t in _PHI3_TOKENS):
        return name
    return re.sub(r"phi-?3", lambda m: m.group(0).replace("-", "").replace("3", "_3"), name,
                  flags=re.IGNORECASE)


def write_gguf(model, tokenizer, tokenizer_dir: Path, file: Path, qtype: str, name: str) -> Path:
    """Write `model` (merged; an architecture of `gguf_arch`) and `tokenizer` as one GGUF file
    of type `qtype` (one of WRITER_TYPES)."""
    import gguf

    file = Path(file)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[qtype]
    config = model.config
    arch = gguf_arch.ARCHITECTURES[config.model_type]
    writer = gguf.GGUFWriter(str(file), gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, arch.gguf_arch)])
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(file_name_field(name, tokenizer))
        writer.add_file_type(int(file_type))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        gguf_arch.add_hyperparameters(writer, config, arch)
        add_tokenizer(writer, tokenizer, Path(tokenizer_dir), int(config.vocab_size))
        for tensor_name, data in gguf_arch.tensors(model, arch):
            tensor_name, data, raw_dtype = encoded(tensor_name, data, qtype)
            writer.add_tensor(tensor_name, data, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return file
