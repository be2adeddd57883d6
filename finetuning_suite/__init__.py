"""finetuning_suite: fine-tune pretrained language models with LoRA, QLoRA or full fine-tuning.

    from finetuning_suite import FineTuner
    ft = FineTuner(dataset_name="dialogue")   # embedded SmolLM2-135M-Instruct
    ft.train("./trained_model", num_train_epochs=1)
    print(ft("What is the capital of France?"))

Layout: `config` (the one configuration), `finetuner` (the facade), `run_settings` (what a
FineTuner's arguments load and generate with), `adapter_set` (several runs' adapters on one
loaded base), and the sub-packages
`model/`, `data/`, `train/`, `infer/` and `cli/`; each says in its docstring what lives there.
The public names below are imported on first use, so `finetune --help` or reading a config
does not pay for importing torch and transformers.
"""
from __future__ import annotations

import importlib
import logging

# bitsandbytes 0.50 logs a warning on import, on every CPU machine, advising `pip install kernels`
# (which fetches kernels from the hub at run time); its pure-PyTorch CPU path works without them.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

__version__ = "0.1.0"

_EXPORTS = {
    "FineTuner": ".finetuner",
    "FinetuneConfig": ".config",
    "TaskType": "peft",
    "Preprocessor": ".data.preprocessing", "DefaultPreprocessor": ".data.preprocessing",
    "TrainerConfig": ".train.trainer_config", "DefaultTrainerConfig": ".train.trainer_config",
    "InferenceHandler": ".infer.generation", "DefaultInferenceHandler": ".infer.generation",
    "FineTuningError": ".errors", "ConfigError": ".errors", "DatasetError": ".errors",
    "DeviceError": ".errors", "ModelLoadError": ".errors",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'finetuning_suite' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
