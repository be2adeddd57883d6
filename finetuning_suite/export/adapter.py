"""The adapter alone: the PEFT folder (`adapter_config.json` + `adapter_model.safetensors`) and
the tokenizer as trained, loadable by plain `peft.PeftModel.from_pretrained(base, folder)`.

It is written by `FineTuner.save`, the package's one save path, so the folder also holds the
run's `config.yaml` and `finetuner_config.json`: `FineTuner(model_id=folder)` reloads it with its
settings (method, quantization, generation length). `adapter_config.json` keeps the base PEFT
recorded, i.e. the folder the base was loaded from (for the embedded model: its converted
safetensors folder in the local cache, a plain model folder that `from_pretrained` loads);
`finetuner_config.json` names the base portably (`embedded:SmolLM2-135M-Instruct`).
"""
from __future__ import annotations

from pathlib import Path


def save_adapter(ft, folder: Path) -> dict[str, Path]:
    """Write the adapter of `ft` (a LoRA/QLoRA FineTuner) into `folder`; return the main files."""
    folder = Path(folder)
    ft.save(folder)
    files = {"adapter": folder / "adapter_model.safetensors",
             "adapter_config": folder / "adapter_config.json"}
    tokenizer_file = folder / "tokenizer.json"
    files["tokenizer"] = tokenizer_file if tokenizer_file.is_file() else folder / "tokenizer_config.json"
    return files
