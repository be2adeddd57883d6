"""Training: the `TrainerConfig` protocol and `DefaultTrainerConfig`.

A trainer config makes the `TrainingArguments` and the `Trainer`; data collation and the loss
stay the Hugging Face pieces (`DataCollatorForSeq2Seq` pads labels with -100, or with packing
`DataCollatorWithFlattening` puts a batch in one row, `train/packing.py`; the model computes the
loss from `labels`), so each can be swapped on its own later.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Protocol, runtime_checkable

from ..config import suggest, training_argument_names
from ..errors import ConfigError
from . import defaults as auto_defaults
from . import precision
from .distill import TEACHER_IDS, TeacherCollator
from .loss import trainer_class
from .meter import tensorboard_available

logger = logging.getLogger(__name__)
from .packing import check_can_pack, packed_implementation, packed_trainer_class, packing_collator


def fixed_defaults() -> dict[str, Any]:
    """The TrainingArguments values `config.TrainingConfig` fixes (logging every 10 steps, seed
    42, no mid-run checkpoints, ...): the one place our defaults are written down. Options whose
    default is "auto" come from `train.defaults.choose_defaults` instead."""
    from ..config import NOT_TRAINING_ARGUMENTS, TrainingConfig

    values = {f.name: f.default for f in dataclasses.fields(TrainingConfig)
              if f.name not in NOT_TRAINING_ARGUMENTS and f.default is not None
              and f.default is not dataclasses.MISSING}
    values["report_to"] = ["tensorboard"] if tensorboard_available() else "none"
    values["include_num_input_tokens_seen"] = "non_padding"  # tokens/s and MFU in metrics.jsonl
    values["logging_nan_inf_filter"] = False  # a NaN loss must show (and stop the run, see guards)
    return values


@runtime_checkable
class TrainerConfig(Protocol):
    """Builds the training arguments and the trainer. Pass an instance as
    `FineTuner(trainer_config=...)`. `FineTuner.train` calls exactly these two methods with
    these keywords; `defaults` are the settings chosen from the data (`train.defaults`), to
    use for whatever the config itself does not set."""

    def training_arguments(self, *, output_dir: str | None, num_train_epochs: float | None,
                           encoder_decoder: bool, device: str, defaults: dict | None): ...

    def build_trainer(self, *, model, args, tokenizer, train_dataset, eval_dataset,
                      encoder_decoder: bool): ...


class DefaultTrainerConfig:
    """Any `transformers.TrainingArguments` (or `Seq2SeqTrainingArguments`) field, by name:

        DefaultTrainerConfig(output_dir="./trained_model", num_train_epochs=3,
                             per_device_train_batch_size=8, save_steps=10_000, save_total_limit=2)

    Unset fields take `TRAINING_DEFAULTS`, then the TrainingArguments defaults. `bf16` and `fp16`
    left out (or "auto") are chosen for the device by `train/precision.py`: bf16 mixed precision
    on CUDA cards and CPUs where it is faster, else fp32 (fp16 on CUDA cards without bf16).

    `stage` (sft, dpo, kto, orpo, grpo) picks the trainer: ours for sft, TRL's for the others
    (`train/stages.py`), whose config's fields are then accepted by name too (beta, loss_type,
    num_generations, ...); `reward_funcs` are GRPO's reward functions (`train/rewards.py`).
    `packing=True` (sft) trains each batch as one row without padding, its examples kept apart
    by the attention (`train/packing.py`); a model that cannot keep them apart is refused.
    `packing=None` packs where the model can keep them apart and pads elsewhere.
    """

    # Compute the output layer and loss only at labelled positions (`train/loss.py`); the value
    # equals the Hugging Face loss. Set False on an instance to get the Trainer's own loss.
    labelled_loss = True

    def __init__(self, stage: str = "sft", reward_funcs=None, packing: bool | None = False, **training_args: Any):
        from ..config.options import STAGES, pass_through_field

        if stage not in STAGES:
            raise ConfigError(f"DefaultTrainerConfig: stage={stage!r} must be one of {list(STAGES)}.")
        if packing is not None and not isinstance(packing, bool):
            raise ConfigError(f"DefaultTrainerConfig: packing={packing!r} must be True, False or None (auto).")
        if packing and stage != "sft":
            raise ConfigError(f"DefaultTrainerConfig: packing=True packs sft batches; stage={stage!r} "
                              "trains with TRL's trainer and its own collator. Leave packing out.")
        unknown = sorted(n for n in training_args
                         if n not in training_argument_names() and pass_through_field(n, stage) is None)
        if unknown:
            hints = [f"{name!r}{suggest(name, training_argument_names())}" for name in unknown]
            where = "TrainingArguments" if stage == "sft" else f"TrainingArguments or {stage} config"
            raise ConfigError(
                f"DefaultTrainerConfig: unknown {where} field(s) {', '.join(hints)}. "
                "See transformers.TrainingArguments (and TRL's config of the stage) for the valid names."
            )
        self.stage, self.reward_funcs, self.packing = stage, reward_funcs, packing
        self.training_args = training_args

    def __repr__(self):
        stage = "" if self.stage == "sft" else f"stage={self.stage!r}, "
        stage += f"packing={self.packing}, " if self.packing is not None else ""
        return f"DefaultTrainerConfig({stage}{', '.join(f'{k}={v!r}' for k, v in self.training_args.items())})"

    def training_arguments(self, *, output_dir=None, num_train_epochs=None, encoder_decoder=False,
                           device="cpu", defaults: dict | None = None):
        """TrainingArguments from, in rising precedence: our fixed defaults, `defaults` (chosen
        from the data by `train.defaults`; without them, the rule's values for an unknown size),
        this config's own values, and the `output_dir` / `num_train_epochs` of the call."""
        from transformers import Seq2SeqTrainingArguments, TrainingArguments

        if defaults is None:
            defaults = auto_defaults.choose_defaults("lora", None)["training"]
        kwargs = {**fixed_defaults(), **defaults, **self.training_args}
        if output_dir is not None:
            kwargs["output_dir"] = str(output_dir)
        if num_train_epochs is not None:
            kwargs["num_train_epochs"] = num_train_epochs
        if device == "cpu":
            kwargs.setdefault("use_cpu", True)
        chosen = precision.choose(device, kwargs.pop("bf16", None), kwargs.pop("fp16", None))
        if chosen != getattr(self, "precision", None):  # once per choice, not per call
            logger.info(chosen.line())
        self.precision = chosen
        kwargs.update(bf16=chosen.bf16, fp16=chosen.fp16)
        if self.stage != "sft":
            import os

            from . import stages

            kwargs["_world_size"] = int(os.environ.get("WORLD_SIZE", "1"))
            kwargs["_batch_given"] = "per_device_train_batch_size" in self.training_args
            kwargs = stages.stage_arguments(self.stage, kwargs, {}, device)
            cls = stages.config_class(self.stage)
        else:
            cls = Seq2SeqTrainingArguments if encoder_decoder else TrainingArguments
        try:
            return cls(**kwargs)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"Invalid training arguments {self.training_args}: {exc}") from exc

    def build_trainer(self, *, model, args, tokenizer, train_dataset, eval_dataset=None,
                      encoder_decoder=False):
        from transformers import Seq2SeqTrainer, Trainer

        if self.stage != "sft":
            from .rewards import reward_functions
            from .stages import build_stage_trainer

            rewards = reward_functions(self.reward_funcs, None)[0] if self.stage == "grpo" else None
            return build_stage_trainer(self.stage, model=model, args=args, tokenizer=tokenizer,
                                       train_dataset=train_dataset, eval_dataset=eval_dataset,
                                       reward_funcs=rewards)

        attention = None
        self.packed = self.packing if self.packing is not None else can_pack(model)
        if self.packed:  # one row per batch; refused where the examples would not stay apart
            attention = packed_implementation(model)
            check_can_pack(model, attention)
            collator = packing_collator()
        else:
            collator = default_collator(tokenizer, model, encoder_decoder, on_cpu=bool(args.use_cpu))
        if TEACHER_IDS in getattr(train_dataset, "column_names", ()):  # self-replay distillation
            collator = TeacherCollator(collator)
        cls = Seq2SeqTrainer if encoder_decoder else Trainer
        if self.labelled_loss and not encoder_decoder:
            cls = trainer_class(cls)  # lm_head and loss on labelled positions only (train/loss.py)
        if attention is not None:
            cls = packed_trainer_class(cls, attention)  # its steps run the packed attention
        return cls(model=model, args=args, data_collator=collator, train_dataset=train_dataset,
                   eval_dataset=eval_dataset, processing_class=tokenizer)


def can_pack(model) -> bool:
    """packing=None: pack where the model keeps packed examples apart (`check_can_pack`): packed
    rows train the same (per-step losses equal to 1e-6) at ~1.9x the labelled tokens per second
    on mixed lengths (bench/results/packing.md); pad elsewhere, saying why. Not the default yet:
    no quality run has compared packed and padded training on the embedded model."""
    try:
        check_can_pack(model)
    except ConfigError as exc:
        logger.info("Not packing: %s", str(exc).removeprefix("packing=True: "))
        return False
    return True


def default_collator(tokenizer, model, encoder_decoder: bool, on_cpu: bool):
    """Dynamic padding of input_ids/attention_mask with the pad token and of labels with -100
    (labels are never derived from pad ids, so EOS stays trained when pad == eos). Seq2seq
    models also get decoder_input_ids shifted from the labels. On accelerators, lengths are
    padded to a multiple of 8 for tensor-core friendly shapes."""
    from transformers import DataCollatorForSeq2Seq

    from ..data.preprocessing import IGNORE_INDEX

    return DataCollatorForSeq2Seq(tokenizer, model=model if encoder_decoder else None,
                                  label_pad_token_id=IGNORE_INDEX, pad_to_multiple_of=None if on_cpu else 8)
