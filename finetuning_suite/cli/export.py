"""`finetune export`: write a trained model out as files other tools load without this package.

    finetune export --model_id runs/x --export_dir out/merged              # transformers folder
    finetune export --model_id runs/x --export_dir out/merged --gguf q4_k_m  # + gguf/*.gguf, Modelfile
    finetune export --model_id runs/x --export_dir out/adapter --merged false   # PEFT adapter
    finetune export --model_id runs/x --export_dir out/merged --overwrite   # replace the folder

`--model_id` is anything `FineTuner` loads (a run folder with an adapter, a base model, ...);
the export itself is `finetuning_suite.export.export_model`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError


@dataclass
class ExportCliArguments:
    """Options of `finetune export`."""

    export_dir: str | None = field(default=None, metadata={"help": "The folder to write (created; "
                                   "an existing non-empty one needs --overwrite)."})
    merged: bool = field(default=True, metadata={"help": "true: a plain transformers model folder "
                         "with the adapter merged in (a 4-bit base is dequantized first); "
                         "false: the PEFT adapter folder alone."})
    gguf: str | None = field(default=None, metadata={"help": "Also write a GGUF file (f16, bf16, "
                             "q8_0; q6_k, q5_k_m, q4_k_m with the gguf extra) and an Ollama "
                             "Modelfile into <export_dir>/gguf/ (Llama, Mistral, Qwen2/3, Gemma 2/3, "
                             "Phi-3 models; needs merged)."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing non-empty "
                            "export_dir entirely."})


def cmd_export(config, options: dict) -> int:
    from ..finetuner import FineTuner
    from ..export import check_export_arguments, export_model

    export_dir = options.get("export_dir")
    if not export_dir:
        raise ConfigError("finetune export: --export_dir is required: the folder to write, e.g. "
                          "`finetune export --model_id runs/x --export_dir out/merged`.")
    gguf = options.get("gguf")
    if isinstance(gguf, str) and gguf.strip().lower() in ("", "none"):
        gguf = None
    settings = dict(merged=options.get("merged", True), gguf=gguf,
                    overwrite=options.get("overwrite", False))
    check_export_arguments(export_dir, **settings)  # before the model is loaded
    ft = FineTuner.from_config(config)
    written = export_model(ft, export_dir, **settings)
    width = max(len(k) for k in written)
    for key, path in written.items():
        print(f"{key:<{width}}  {path}")
    return 0
