"""Export: take a fine-tuned model out of the package, as files other tools load without it.

`export_model(ft, path, merged=True, gguf=None, overwrite=False)` (in `api`) is the one entry
point; `FineTuner.export` and `finetune export` call it. The pieces, one concern each: `merged`
(the adapter merged into a float32 copy of the base, a quantized base dequantized first; a
plain transformers folder), `adapter` (the PEFT adapter folder alone), `gguf_file` (a llama.cpp
GGUF file, F16/BF16/Q8_0), `gguf_arch` (what differs per architecture: Llama, Mistral, Qwen2/3,
Gemma 2/3, Phi-3), `gguf_quantize` (the k-quants through llama.cpp's quantizer), `modelfile` (the Ollama `Modelfile`
beside it) and `atomic` (every export is written to a temporary sibling folder and renamed into
place). Imports `errors`, `model`, `data` and `infer` only; never `train` or `cli`.
"""
from .api import GGUF_TYPES, check_export_arguments, export_model

__all__ = ["GGUF_TYPES", "check_export_arguments", "export_model"]
