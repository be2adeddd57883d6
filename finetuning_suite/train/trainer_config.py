"""Training: the `TrainerConfig` protocol and `DefaultTrainerConfig`.

A trainer config makes the `TrainingArguments` and the `Trainer`; data collation and the loss
stay the Hugging Face pieces (`DataCollatorForSeq2Seq` pads labels with -100, the model computes
the loss from `labels`), so each can be swapped on its own later.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
from typing import Any, Protocol, runtime_checkable

from ..errors import ConfigError

DEFAULT_OUTPUT_DIR = "trained_model"

# Our defaults where they differ from TrainingArguments': a LoRA learning rate, frequent
# logging for short runs, and one seed recorded with every run.
TRAINING_DEFAULTS: dict[str, Any] = {
    "num_train_epochs": 3,
    "per_device_train_batch_size": 8,
    "learning_rate": 2e-4,
    "warmup_steps": 0.03,
    "logging_steps": 10,
    "report_to": "none",
    "seed": 42,
}


@functools.lru_cache(maxsize=None)
def training_argument_names() -> frozenset[str]:
    from transformers import Seq2SeqTrainingArguments

    return frozenset(f.name for f in dataclasses.fields(Seq2SeqTrainingArguments) if f.init)


@runtime_checkable
class TrainerConfig(Protocol):
    """Builds the training arguments and the trainer. Pass an instance as
    `FineTuner(trainer_config=...)`."""

    def training_arguments(self, *, output_dir: str | None, num_train_epochs: float | None,
                           encoder_decoder: bool, device: str): ...

    def build_trainer(self, *, model, args, tokenizer, train_dataset, eval_dataset,
                      encoder_decoder: bool): ...


class DefaultTrainerConfig:
    """Any `transformers.TrainingArguments` (or `Seq2SeqTrainingArguments`) field, by name:

        DefaultTrainerConfig(output_dir="./trained_model", num_train_epochs=3,
                             per_device_train_batch_size=8, save_steps=10_000, save_total_limit=2)

    Unset fields take `TRAINING_DEFAULTS`, then the TrainingArguments defaults. The device decides
    precision: fp32 on CPU, bf16 mixed precision on CUDA cards that support it.
    """

    def __init__(self, **training_args: Any):
        unknown = sorted(set(training_args) - training_argument_names())
        if unknown:
            hints = []
            for name in unknown:
                close = difflib.get_close_matches(name, training_argument_names(), n=1)
                hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ConfigError(
                f"DefaultTrainerConfig: unknown TrainingArguments field(s) {', '.join(hints)}. "
                "See transformers.TrainingArguments for the valid names."
            )
        self.training_args = training_args

    def __repr__(self):
        return f"DefaultTrainerConfig({', '.join(f'{k}={v!r}' for k, v in self.training_args.items())})"

    def training_arguments(self, *, output_dir=None, num_train_epochs=None, encoder_decoder=False,
                           device="cpu"):
        import torch
        from transformers import Seq2SeqTrainingArguments, TrainingArguments

        kwargs = {**TRAINING_DEFAULTS, **self.training_args}
        if output_dir is not None:
            kwargs["output_dir"] = str(output_dir)
        kwargs.setdefault("output_dir", DEFAULT_OUTPUT_DIR)
        if num_train_epochs is not None:
            kwargs["num_train_epochs"] = num_train_epochs
        if device == "cpu":
            kwargs.setdefault("use_cpu", True)
        elif device.startswith("cuda") and "fp16" not in kwargs:
            kwargs.setdefault("bf16", torch.cuda.is_bf16_supported())
        cls = Seq2SeqTrainingArguments if encoder_decoder else TrainingArguments
        try:
            return cls(**kwargs)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"Invalid training arguments {self.training_args}: {exc}") from exc

    def build_trainer(self, *, model, args, tokenizer, train_dataset, eval_dataset=None,
                      encoder_decoder=False):
        from transformers import Seq2SeqTrainer, Trainer

        collator = default_collator(tokenizer, model, encoder_decoder, on_cpu=bool(args.use_cpu))
        cls = Seq2SeqTrainer if encoder_decoder else Trainer
        return cls(model=model, args=args, data_collator=collator, train_dataset=train_dataset,
                   eval_dataset=eval_dataset, processing_class=tokenizer)


def default_collator(tokenizer, model, encoder_decoder: bool, on_cpu: bool):
    """Dynamic padding of input_ids/attention_mask with the pad token and of labels with -100
    (labels are never derived from pad ids, so EOS stays trained when pad == eos). Seq2seq
    models also get decoder_input_ids shifted from the labels. On accelerators, lengths are
    padded to a multiple of 8 for tensor-core friendly shapes."""
    from transformers import DataCollatorForSeq2Seq

    from ..data.preprocessing import IGNORE_INDEX

    return DataCollatorForSeq2Seq(tokenizer, model=model if encoder_decoder else None,
                                  label_pad_token_id=IGNORE_INDEX, pad_to_multiple_of=None if on_cpu else 8)
