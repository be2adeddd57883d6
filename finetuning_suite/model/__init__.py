"""The model: where it comes from and what is put on it.

Finding and loading a base model and tokenizer (`loading`), the embedded SmolLM2 and GGUF
conversion (`embedded`), device and dtype choice (`device`), bitsandbytes quantization
(`quantization`), LoRA / full fine-tuning set-up (`lora`) and the facts about a loaded model
that the rest of the package reads instead of recomputing (`facts`). Imports `errors`,
`config.options` (a constant) and the Hugging Face libraries; never `data`, `train`, `infer` or
`cli`.
"""
