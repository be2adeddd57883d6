"""finetuning_suite: fine-tune pretrained language models with LoRA / QLoRA.

    from finetuning_suite import FineTuner
    ft = FineTuner(dataset_name="dialogue")   # embedded SmolLM2-135M-Instruct
    ft.train("./trained_model", num_train_epochs=1)
    print(ft("What is the capital of France?"))
"""
from peft import TaskType

from .errors import ConfigError, DatasetError, DeviceError, FineTuningError, ModelLoadError
from .finetuner import FineTuner
from .inference import DefaultInferenceHandler, InferenceHandler
from .preprocessing import DefaultPreprocessor, Preprocessor
from .training import DefaultTrainerConfig, TrainerConfig

__version__ = "0.1.0"

__all__ = [
    "FineTuner", "TaskType",
    "Preprocessor", "DefaultPreprocessor",
    "TrainerConfig", "DefaultTrainerConfig",
    "InferenceHandler", "DefaultInferenceHandler",
    "FineTuningError", "ConfigError", "DatasetError", "DeviceError", "ModelLoadError",
]
