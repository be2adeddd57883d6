"""What a `FineTuner` of some arguments loads and generates with, decided before any model is
loaded: `RunSettings`.

`FineTuner.__init__` builds one and loads the model it names. `AdapterSet` builds one for each
run whose adapter joins a base that is already loaded, so such a run answers as
`FineTuner(run)` does: the same configuration (the run folder's saved settings under the
arguments given), device, dtype, quantization, model source, chat format, generation settings
and max_length, each computed here once for both.

    settings = RunSettings.of({"model_id": "runs/facts", "device": "cpu"})
    settings.source.adapter_path, settings.bits, settings.max_length
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .arguments import build_config, generation_settings
from .config import FinetuneConfig
from .data.chat_template import ChatFormat, decide_chat_format
from .infer.generation import DefaultInferenceHandler
from .model.device import default_dtype, parse_dtype, resolve_device
from .model.loading import ModelSource, resolve_model_source
from .model.quantization import get_quantization_config


@dataclass(frozen=True)
class RunSettings:
    config: FinetuneConfig
    device: str
    dtype: Any  # a torch.dtype
    quantization_config: Any  # a transformers.BitsAndBytesConfig, or None
    source: ModelSource  # the base model, and the adapter to put on it (a run folder's)

    @classmethod
    def of(cls, given: dict) -> "RunSettings":
        """The settings of `FineTuner(**given)` (`given`: its arguments by name)."""
        return cls.of_config(build_config(given))

    @classmethod
    def of_config(cls, cfg: FinetuneConfig) -> "RunSettings":
        device = resolve_device(cfg.model.device)
        quantization = get_quantization_config(cfg.quantized, cfg.method.quantization_config)
        dtype = parse_dtype(cfg.model.dtype, "dtype") if cfg.model.dtype is not None else default_dtype(device)
        return cls(cfg, device, dtype, quantization,
                   resolve_model_source(cfg.model.model_id, cfg.model.adapter_path))

    @property
    def bits(self) -> int:
        """4 or 8 for a quantized base, else 0."""
        q = self.quantization_config
        return 0 if q is None else (4 if q.load_in_4bit else 8)

    @property
    def max_length(self) -> int:
        return self.config.generation.max_length

    def chat_format(self, tokenizer, model_config) -> ChatFormat:
        """How prompts are rendered for this run's `tokenizer` (a run folder's holds the template
        it was trained with): the one decision, `decide_chat_format`."""
        return decide_chat_format(tokenizer, model_config,
                                  use_chat_template=self.config.data.use_chat_template,
                                  system_prompt=self.config.generation.system_prompt)

    def inference_handler(self, chat_format: ChatFormat) -> DefaultInferenceHandler:
        """The default handler with this run's generation settings, rendering with `chat_format`."""
        return DefaultInferenceHandler(**generation_settings(self.config), chat_format=chat_format)
