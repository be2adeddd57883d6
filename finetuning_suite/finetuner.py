"""`FineTuner`: the facade of the spec (`shared/spec/finetuner-class.md`).

It only wires the pieces together: `loading` (model, tokenizer), `quantization`, `lora`,
`data` + `preprocessing` (dataset -> tokens and labels), `training` (arguments + Trainer) and
`inference` (generation). Each plug-in point is an object the caller may pass.

    from finetuning_suite import FineTuner
    ft = FineTuner()                               # embedded SmolLM2-135M-Instruct, device auto
    print(ft("What is the capital of France?"))
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from .data.sources import check_source, load_source, split_dataset
from .model.device import default_dtype, resolve_device
from .errors import ConfigError, DatasetError, FineTuningError, Problems
from .infer.generation import DefaultInferenceHandler
from .model.loading import (RUN_CONFIG_FILE, ensure_pad_token, load_config, load_model, load_tokenizer,
                      resolve_model_source)
from .model.lora import (SPEC_TARGET_MODULES, SPEC_TASK_TYPE, apply_lora, build_lora_config, load_lora,
                   validate_lora_args)
from .data.preprocessing import DefaultPreprocessor
from .model.quantization import get_quantization_config, parse_dtype, validate_quantization_config
from .train.runinfo import library_versions, timestamp, write_json_atomic
from .train.trainer_config import DefaultTrainerConfig

logger = logging.getLogger(__name__)


class FineTuner:
    """Load a pretrained model, add LoRA (optionally on a 4-bit base), train it on a dataset,
    and generate. Arguments as in the spec; those after `inference_handler` are extras:

    lora_dropout: dropout on the LoRA path.
    adapter_path: a trained adapter folder to load on top of `model_id`.
    eval_fraction: hold out this fraction of rows for evaluation when the dataset has no
        validation split.
    dtype: weights dtype (default: fp32 on CPU/MPS, bf16 on CUDA when supported).
    trust_remote_code: allow model repositories' own code (off by default).
    """

    def __init__(self, model_id: str | None = None, device: str | None = None, dataset_name=None,
                 lora_r=16, lora_alpha=32, lora_target_modules=SPEC_TARGET_MODULES,
                 lora_bias="none", preprocessor=None, lora_task_type=SPEC_TASK_TYPE,
                 max_length=1000, quantize: bool = False, quantization_config: dict | None = None,
                 trainer_config=None, inference_handler=None, *, lora_dropout: float = 0.05,
                 adapter_path=None, eval_fraction: float | None = None, dtype=None,
                 trust_remote_code: bool = False):
        problems = Problems("FineTuner")
        self._validate(problems, locals())
        try:
            self.device = resolve_device(device)
        except FineTuningError as exc:
            problems.items.append(str(exc))
        problems.raise_if_any()

        self.dataset_name = dataset_name
        self.max_length = max_length
        self.eval_fraction = eval_fraction
        self.preprocessor = preprocessor if preprocessor is not None else DefaultPreprocessor()
        self.trainer_config = trainer_config if trainer_config is not None else DefaultTrainerConfig()
        self.inference_handler = (inference_handler if inference_handler is not None
                                  else DefaultInferenceHandler())
        self.quantization_config = get_quantization_config(quantize, quantization_config)
        self.dtype = parse_dtype(dtype, "dtype") if dtype is not None else default_dtype(self.device)

        self.source = resolve_model_source(model_id, adapter_path)
        config = load_config(self.source, trust_remote_code)
        self.tokenizer = load_tokenizer(self.source, trust_remote_code)
        ensure_pad_token(self.tokenizer)
        # Training pads on the right: left padding would shift Llama-style position ids between
        # training and generation. Single-prompt generation needs no padding.
        self.tokenizer.padding_side = "right"
        base = load_model(self.source, config, self.device, self.dtype, self.quantization_config,
                          trust_remote_code)
        base.config.pad_token_id = self.tokenizer.pad_token_id
        if getattr(base, "generation_config", None) is not None:
            base.generation_config.pad_token_id = self.tokenizer.pad_token_id
        quantized = self.quantization_config is not None
        if self.source.adapter_path is None:
            lora_config = build_lora_config(
                base, r=lora_r, alpha=lora_alpha, dropout=lora_dropout, bias=lora_bias,
                target_modules=lora_target_modules, task_type=lora_task_type)
            self.model = apply_lora(base, lora_config, quantized)
        else:
            self.model = load_lora(base, self.source.adapter_path, quantized)
        trainable, total = self.model.get_nb_trainable_parameters()
        bits = f", {self._quant_bits()}-bit" if self._quant_bits() else ""
        logger.info("Model %s on %s%s: %s trainable parameters of %s (%.2f%%).", self.source.source,
                    self.device, bits, f"{trainable:,}", f"{total:,}", 100 * trainable / max(total, 1))
        self.tokenized_dataset = None
        self.eval_dataset = None
        self.data_stats: dict = {}

    # -- construction helpers -------------------------------------------------------------
    @staticmethod
    def _validate(problems: Problems, args: dict) -> None:
        model_id = args["model_id"]
        if model_id is not None and not isinstance(model_id, (str, os.PathLike)):
            problems.add("model_id", model_id, "must be a hub id, a local folder or .gguf path, or None "
                         "for the embedded model.")
        validate_lora_args(problems, lora_r=args["lora_r"], lora_alpha=args["lora_alpha"],
                           lora_dropout=args["lora_dropout"], lora_bias=args["lora_bias"],
                           lora_target_modules=args["lora_target_modules"],
                           lora_task_type=args["lora_task_type"])
        max_length = args["max_length"]
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= 0:
            problems.add("max_length", max_length, "must be a positive integer: the most new tokens "
                         "generate() produces, e.g. 256.")
        if not isinstance(args["quantize"], bool):
            problems.add("quantize", args["quantize"], "must be True or False.")
        for issue in validate_quantization_config(args["quantization_config"]):
            problems.add("quantization_config", args["quantization_config"], issue)
        if args["quantization_config"] is not None and args["quantize"] is False:
            problems.add("quantization_config", args["quantization_config"],
                         "is given but quantize=False; pass quantize=True to use it.")
        for name, method, example in (("preprocessor", "__call__", "DefaultPreprocessor()"),
                                      ("trainer_config", "build_trainer", "DefaultTrainerConfig()"),
                                      ("inference_handler", "generate", "DefaultInferenceHandler()")):
            value = args[name]
            if value is None:
                continue
            if isinstance(value, type):
                problems.add(name, value, f"is a class; pass an instance, e.g. {name}={example}.")
            elif not callable(getattr(value, method, None)):
                problems.add(name, value, f"has no {method}() method; pass an object like {example}.")
        if args["dtype"] is not None:
            try:
                parse_dtype(args["dtype"], "dtype")
            except ConfigError as exc:
                problems.items.append(str(exc))
        fraction = args["eval_fraction"]
        if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, float)
                                     or not 0 < fraction < 1):
            problems.add("eval_fraction", fraction, "must be a float between 0 and 1, e.g. 0.1.")
        issue = check_source(args["dataset_name"])
        if issue:
            problems.add("dataset_name", args["dataset_name"], issue)

    def _quant_bits(self) -> int:
        q = self.quantization_config
        return 0 if q is None else (4 if q.load_in_4bit else 8)

    def __repr__(self) -> str:
        parts = [f"model={self.source.source!r}", f"device={self.device!r}"]
        if self._quant_bits():
            parts.append(f"{self._quant_bits()}-bit")
        cfg = self.model.peft_config.get("default")
        if cfg is not None:
            targets = cfg.target_modules if isinstance(cfg.target_modules, str) else sorted(cfg.target_modules)
            parts.append(f"lora_r={cfg.r}, lora_alpha={cfg.lora_alpha}, targets={targets}")
        if isinstance(self.dataset_name, (str, os.PathLike)):
            parts.append(f"dataset={str(self.dataset_name)!r}")
        return f"FineTuner({', '.join(parts)})"

    @property
    def is_encoder_decoder(self) -> bool:
        return bool(getattr(self.model.config, "is_encoder_decoder", False))

    # -- the spec's methods ---------------------------------------------------------------
    def __call__(self, prompt_text, max_length: int | None = None) -> str:
        return self.generate(prompt_text, max_length)

    def generate(self, prompt_text, max_length: int | None = None) -> str:
        """Text generated for `prompt_text` (without the prompt). `max_length` bounds the number
        of new tokens (default: the constructor's `max_length`), capped by the context window."""
        return self.inference_handler.generate(
            prompt_text, self.model, self.tokenizer, self.device,
            self.max_length if max_length is None else max_length)

    def preprocess_data(self):
        """Load `dataset_name`, tokenize it with the preprocessor and return the tokenized
        training `Dataset` (raw columns removed). A validation split, if any, is kept in
        `self.eval_dataset`."""
        if self.dataset_name is None:
            raise ConfigError("preprocess_data() needs a dataset: pass FineTuner(dataset_name=...), "
                              "e.g. dataset_name='dialogue' or a path to a .jsonl file.")
        seed = getattr(self.trainer_config, "training_args", {}).get("seed", 42)
        train, eval_set = split_dataset(load_source(self.dataset_name), self.eval_fraction, seed)
        self.data_stats = {}
        self.tokenized_dataset = self._tokenize(train, "train")
        self.eval_dataset = self._tokenize(eval_set, "eval") if eval_set is not None else None
        return self.tokenized_dataset

    def _tokenize(self, split, name: str):
        """Run the preprocessor on one split, check its output is what the trainer consumes, and
        keep its stats (if it has any) under `name`."""
        dataset = self.preprocessor(split, self.tokenizer, self.model.config)
        self.data_stats[name] = dict(getattr(self.preprocessor, "stats", None) or {})
        columns = getattr(dataset, "column_names", None)
        if columns is None or not {"input_ids", "labels"} <= set(columns):
            raise DatasetError(
                f"{type(self.preprocessor).__name__} returned {type(dataset).__name__} with columns "
                f"{columns}; a preprocessor must return a datasets.Dataset with 'input_ids' and "
                "'labels' (-100 where no loss is wanted)."
            )
        return dataset

    def train(self, output_dir: str | None = None, num_train_epochs: float | None = None) -> dict:
        """Fine-tune on the dataset; save the adapter, tokenizer and run config in `output_dir`.
        Arguments left out come from `trainer_config`. Returns the training (and, with an eval
        split, evaluation) metrics."""
        problems = Problems("FineTuner.train")
        if num_train_epochs is not None and (isinstance(num_train_epochs, bool)
                                             or not isinstance(num_train_epochs, (int, float))
                                             or num_train_epochs <= 0):
            problems.add("num_train_epochs", num_train_epochs, "must be a positive number, e.g. 3.")
        problems.raise_if_any()
        args = self.trainer_config.training_arguments(
            output_dir=output_dir, num_train_epochs=num_train_epochs,
            encoder_decoder=self.is_encoder_decoder, device=self.device)
        _check_output_dir(args.output_dir)
        if args.num_train_epochs <= 0 and args.max_steps <= 0:
            raise ConfigError(f"num_train_epochs={args.num_train_epochs!r} must be a positive number, e.g. 3.")
        if self.tokenized_dataset is None:
            self.preprocess_data()  # may raise on bad data: nothing has been written yet
        trainer = self.trainer_config.build_trainer(
            model=self.model, args=args, tokenizer=self.tokenizer,
            train_dataset=self.tokenized_dataset, eval_dataset=self.eval_dataset,
            encoder_decoder=self.is_encoder_decoder)
        metrics = dict(trainer.train().metrics)
        if self.eval_dataset is not None:
            metrics.update(trainer.evaluate())
        self.save(args.output_dir, training_args=args, metrics=metrics)
        return metrics

    # -- extras ---------------------------------------------------------------------------
    def save(self, output_dir, training_args=None, metrics: dict | None = None) -> None:
        """Save the adapter (PEFT safetensors), the tokenizer and `finetuner_config.json`. The
        config is written last and atomically: its presence marks a complete save."""
        out = _check_output_dir(output_dir)
        self.model.save_pretrained(out, safe_serialization=True)
        self.tokenizer.save_pretrained(out)
        write_json_atomic(out / RUN_CONFIG_FILE, self.run_config(training_args, metrics))

    def run_config(self, training_args=None, metrics: dict | None = None) -> dict:
        peft_config = self.model.peft_config.get("default")
        dataset = self.dataset_name if isinstance(self.dataset_name, (str, os.PathLike)) else (
            type(self.dataset_name).__name__ if self.dataset_name is not None else None)
        return {
            "created": timestamp(),
            "model": {
                "source": self.source.source,
                "adapter_loaded_from": self.source.adapter_path,
                "model_type": getattr(self.model.config, "model_type", None),
                "is_encoder_decoder": self.is_encoder_decoder,
                "dtype": str(self.dtype),
                "device": self.device,
                "quantization": self.quantization_config.to_dict() if self.quantization_config else None,
            },
            "lora": peft_config.to_dict() if peft_config is not None else None,
            "data": {"dataset": str(dataset) if dataset is not None else None,
                     "preprocessor": type(self.preprocessor).__name__, "stats": self.data_stats,
                     "eval_fraction": self.eval_fraction},
            "generation": {"max_length": self.max_length,
                           "inference_handler": type(self.inference_handler).__name__},
            "training": training_args.to_dict() if training_args is not None else None,
            "seed": training_args.seed if training_args is not None else None,
            "metrics": metrics,
            "versions": library_versions(),
        }


def _check_output_dir(output_dir) -> Path:
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir={str(out)!r} is an existing file; pass a folder path.")
    return out
