"""finetuning_suite: fine-tune pretrained language models with LoRA / QLoRA.

    from finetuning_suite import FineTuner
    ft = FineTuner(dataset_name="dialogue")   # embedded SmolLM2-135M-Instruct
    ft.train("./trained_model", num_train_epochs=1)
    print(ft("What is the capital of France?"))
"""
from peft import TaskType

from .errors import ConfigError, DatasetError, DeviceError, FineTuningError, ModelLoadError
from .finetuner import FineTuner
from .infer.generation import DefaultInferenceHandler, InferenceHandler
from .data.preprocessing import DefaultPreprocessor, Preprocessor
from .train.trainer_config import DefaultTrainerConfig, TrainerConfig

__version__ = "0.1.0"

__all__ = [
    "FineTuner", "TaskType",
    "Preprocessor", "DefaultPreprocessor",
    "TrainerConfig", "DefaultTrainerConfig",
    "InferenceHandler", "DefaultInferenceHandler",
    "FineTuningError", "ConfigError", "DatasetError", "DeviceError", "ModelLoadError",
]
