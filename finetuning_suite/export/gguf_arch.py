"""What differs per architecture when a merged transformers model becomes a llama.cpp GGUF file:
the llama.cpp architecture name, how tensors change on the way, the hyperparameters llama.cpp
reads, and what llama.cpp cannot compute the way transformers does (refused up front).

Why our own table and not llama.cpp's `convert_hf_to_gguf.py`: that converter ships only inside
the llama-cpp-python *source* archive (vendor/llama.cpp, checked on 0.3.36; the built package
installs no Python converter), and it needs the `gguf-py` vendored beside it: the PyPI `gguf`
0.19.0 has the same version number but lacks what the converter imports (`gguf.
LazyChunkedTensor`, `MODEL_ARCH.DFLASH`), so it stops with AttributeError. It also refuses any
byte-level BPE tokenizer whose encoding of a probe text is not one of its recorded hashes,
and Gemma 2 needs a `tokenizer.model` file. So the facts below follow that converter
(vendor/llama.cpp/conversion/*.py) and llama.cpp's loaders (src/models/*.cpp) of
llama-cpp-python 0.3.36, and every architecture listed is checked by loading tiny random models
in llama.cpp itself (tests/test_export_llama_cpp.py).

Traps handled here, each found in llama.cpp's sources:
- Llama/Mistral rotate adjacent pairs (rope "norm"): q and k rows are permuted per head; every
  other architecture here uses the Hugging Face layout (rope "neox") and is written unpermuted.
- Gemma's RMSNorm multiplies by (1 + weight): llama.cpp multiplies by the stored weight, so the
  file stores weight + 1. Its embedding scale sqrt(hidden) and tied output are llama.cpp's own.
- Gemma 2/3 scale queries by query_pre_attn_scalar**-0.5 in transformers; llama.cpp derives the
  scale from the model size (1/sqrt(head_dim), or 1/sqrt(hidden/heads) for the 27B models). A
  model where the two differ is refused.
- Sliding-window attention: Gemma 2/3 get the window and the per-layer pattern; llama.cpp's
  Llama (Mistral), Qwen2/3 and Phi-3 graphs attend to every earlier token, so their files claim a
  context of only the window (within it both attend to the same tokens).
- Phi-3 stores q/k/v and gate/up fused; llama.cpp reads them fused as they are.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Arch:
    """How one transformers architecture (`config.model_type`) is written."""

    gguf_arch: str                  # gguf.MODEL_ARCH member name
    classes: str                    # for messages
    permute_qk: bool = False        # llama.cpp rope type "norm": adjacent pairs rotate together
    norm_plus_one: bool = False     # Gemma: RMSNorm scales by (1 + weight)
    activation: str = "silu"
    swa: bool = False               # llama.cpp computes sliding-window attention for it
    attn_softcap: bool = False      # llama.cpp applies attn_logit_softcapping (Gemma 2)
    final_softcap: bool = False     # llama.cpp applies final_logit_softcapping
    query_scale_27b_layers: int | None = None  # Gemma: llama.cpp's 27B layer count (its own scale)
    needs_tied: bool = False        # llama.cpp's graph has no separate output matrix


ARCHITECTURES: dict[str, Arch] = {
    "llama": Arch("LLAMA", "LlamaForCausalLM", permute_qk=True),
    "mistral": Arch("LLAMA", "MistralForCausalLM", permute_qk=True),
    "qwen2": Arch("QWEN2", "Qwen2ForCausalLM"),
    "qwen3": Arch("QWEN3", "Qwen3ForCausalLM"),
    "gemma2": Arch("GEMMA2", "Gemma2ForCausalLM", norm_plus_one=True, activation="gelu_pytorch_tanh",
                   swa=True, attn_softcap=True, final_softcap=True, query_scale_27b_layers=46,
                   needs_tied=True),
    "gemma3_text": Arch("GEMMA3", "Gemma3ForCausalLM", norm_plus_one=True,
                        activation="gelu_pytorch_tanh", swa=True, final_softcap=True,
                        query_scale_27b_layers=62),
    "phi3": Arch("PHI3", "Phi3ForCausalLM"),
}

WAY_OUT = ("the merged export (gguf=None) works for it; convert the merged folder with "
           "llama.cpp's convert_hf_to_gguf.py.")


def supported_list() -> str:
    return ", ".join(sorted({a.classes for a in ARCHITECTURES.values()}))


def architecture(config) -> str:
    archs = getattr(config, "architectures", None) or []
    return f"{config.model_type} ({', '.join(archs)})" if archs else str(config.model_type)


# -- config facts -------------------------------------------------------------------------------
def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def rope_parameters(config, layer_type: str = "full_attention") -> dict:
    """The rope settings of one layer type (transformers 5 keeps one dict per layer type for
    Gemma 3, one dict for the others; older configs have rope_theta / rope_scaling)."""
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    if isinstance(rope.get(layer_type), dict):
        rope = dict(rope[layer_type])
    elif any(isinstance(v, dict) for v in rope.values()):
        rope = dict(next(v for v in rope.values() if isinstance(v, dict)))
    rope.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    rope.setdefault("rope_type", rope.get("type", "default"))
    rope.setdefault("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0) or 1.0)
    return rope


def sliding_layers(config) -> list[bool]:
    """Per layer: does transformers restrict its attention to the last `sliding_window` tokens."""
    n = config.num_hidden_layers
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if types:
        return [t == "sliding_attention" and bool(window) for t in types][:n]
    if getattr(config, "use_sliding_window", None) is False:
        return [False] * n
    return [bool(window)] * n


def activation(config) -> str:
    return getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", "silu")


def llama_cpp_query_scale(config, arch: Arch) -> float:
    """The query scale llama.cpp's Gemma graphs use (src/models/gemma2.cpp, gemma3.cpp)."""
    if arch.query_scale_27b_layers == config.num_hidden_layers:
        return 1.0 / math.sqrt(config.hidden_size // config.num_attention_heads)
    return 1.0 / math.sqrt(head_dim(config))


def problems(config) -> list[tuple[str, object, str]]:
    """Why llama.cpp would not compute what this model computes, as (name, value, fix); empty
    when it would."""
    arch = ARCHITECTURES.get(getattr(config, "model_type", None))
    if arch is None:
        return [("gguf", architecture(config), f"GGUF export is written for {supported_list()} "
                 "only; " + WAY_OUT)]
    found = []

    def refuse(value, reason):
        found.append(("gguf", value, reason + "; " + WAY_OUT))

    for layer_type in ("full_attention", "sliding_attention"):
        rope = rope_parameters(config, layer_type)
        allowed = ("default", "linear") if layer_type == "full_attention" else ("default",)
        if rope["rope_type"] not in allowed:
            refuse(f"rope_type={rope['rope_type']!r}", f"only {' and '.join(allowed)} rope "
                   f"scaling is written for {arch.classes}")
            break
    if getattr(config, "mlp_bias", False):
        refuse("mlp_bias=True", "MLP biases are not written")
    if getattr(config, "attention_bias", False):  # Qwen2's q/k/v biases are not this flag
        refuse("attention_bias=True", "attention biases are written for Qwen2 only")
    if activation(config) != arch.activation:
        refuse(f"activation={activation(config)!r}", f"llama.cpp's {arch.classes} uses "
               f"{arch.activation}")
    if arch.query_scale_27b_layers is not None:
        scalar = getattr(config, "query_pre_attn_scalar", None) or head_dim(config)
        if not math.isclose(scalar ** -0.5, llama_cpp_query_scale(config, arch), rel_tol=1e-6):
            refuse(f"query_pre_attn_scalar={scalar}", "llama.cpp scales queries by "
                   f"{llama_cpp_query_scale(config, arch):.6g} for a model of this size, "
                   f"transformers by {scalar ** -0.5:.6g}")
    if getattr(config, "attn_logit_softcapping", None) and not arch.attn_softcap:
        refuse(f"attn_logit_softcapping={config.attn_logit_softcapping}",
               f"llama.cpp's {arch.classes} does not cap attention logits")
    if getattr(config, "final_logit_softcapping", None) and not arch.final_softcap:
        refuse(f"final_logit_softcapping={config.final_logit_softcapping}",
               f"llama.cpp's {arch.classes} does not cap the final logits")
    if arch.needs_tied and not getattr(config, "tie_word_embeddings", True):
        refuse("tie_word_embeddings=False", f"llama.cpp's {arch.classes} uses the token "
               "embedding as output matrix")
    if head_dim(config) * config.num_attention_heads != config.hidden_size \
            and arch.gguf_arch == "PHI3":
        refuse(f"head_dim={head_dim(config)}", "llama.cpp's Phi-3 needs heads x head_dim = hidden size")
    return found


# -- what goes into the file --------------------------------------------------------------------
def context_length(config, arch: Arch) -> int:
    """The context the file claims: the model's, or only the sliding window where llama.cpp's
    graph attends to every earlier token (so that within the claimed context llama.cpp computes
    what transformers computes)."""
    n_ctx = int(config.max_position_embeddings)
    window = getattr(config, "sliding_window", None)
    if not arch.swa and window and any(sliding_layers(config)) and window < n_ctx:
        logger.warning("%s uses sliding-window attention (%d tokens), which llama.cpp's %s graph "
                       "does not; the GGUF file claims a context of %d tokens, over which both "
                       "compute the same.", arch.classes, window, arch.gguf_arch.lower(), window)
        return int(window)
    return n_ctx


def add_hyperparameters(writer, config, arch: Arch) -> None:
    import gguf

    n_head = config.num_attention_heads
    dim = head_dim(config)
    writer.add_context_length(context_length(config, arch))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(n_head))
    writer.add_head_count_kv(int(getattr(config, "num_key_value_heads", None) or n_head))
    writer.add_key_length(int(dim))
    writer.add_value_length(int(dim))
    rope = rope_parameters(config, "full_attention")
    writer.add_rope_dimension_count(int(dim * float(rope["partial_rotary_factor"])))
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(int(config.vocab_size))
    if arch.gguf_arch == "PHI3" and getattr(config, "original_max_position_embeddings", None):
        writer.add_rope_scaling_orig_ctx_len(int(config.original_max_position_embeddings))
    if arch.swa:
        pattern = sliding_layers(config)
        writer.add_sliding_window(int(config.sliding_window or 0) if any(pattern) else 0)
        writer.add_sliding_window_pattern(pattern)
        if any(pattern):
            writer.add_rope_freq_base_swa(float(rope_parameters(config, "sliding_attention")["rope_theta"]))
    if arch.attn_softcap and getattr(config, "attn_logit_softcapping", None):
        writer.add_attn_logit_softcapping(float(config.attn_logit_softcapping))
    if arch.final_softcap and getattr(config, "final_logit_softcapping", None):
        writer.add_final_logit_softcapping(float(config.final_logit_softcapping))


def permute_rotary(weights: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """Rows of a query/key projection from the Hugging Face rotary layout (each head's first and
    second halves rotate together) to llama.cpp's "norm" layout (adjacent pairs)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    shape = weights.shape
    return (weights.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:])
            .swapaxes(1, 2).reshape(shape))


def tensors(model, arch: Arch):
    """(GGUF name, float32 array) for every tensor of `model`, changed as llama.cpp needs."""
    import gguf
    import torch

    config = model.config
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.gguf_arch), config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # written once, as token_embd; llama.cpp ties output to it
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"no GGUF name for tensor {hf_name!r} of this {arch.classes} model")
        data = tensor.detach().to("cpu", torch.float32).numpy()
        if arch.permute_qk and ".attn_q." in name:
            data = permute_rotary(data, n_head, n_head)
        elif arch.permute_qk and ".attn_k." in name:
            data = permute_rotary(data, n_head, n_kv)
        if arch.norm_plus_one and hf_name.endswith("norm.weight"):
            data = data + np.float32(1.0)
        yield name, data
