"""`FineTuner`: the facade of the spec (`shared/spec/finetuner-class.md`).

It only wires the pieces together: `config` (the one configuration, validated), `model`
(loading, quantization, LoRA / full fine-tuning), `data` (dataset -> tokens and labels, the chat
template), `train` (arguments, defaults, Trainer, run record) and `infer` (generation,
evaluation). Each plug-in point is an object the caller may pass.

    from finetuning_suite import FineTuner
    ft = FineTuner()                               # embedded SmolLM2-135M-Instruct, device auto
    print(ft("What is the capital of France?"))
"""
from __future__ import annotations

import inspect
import logging
import os
import shutil
import time
from pathlib import Path

from .arguments import build_config, generation_settings
from .config import FinetuneConfig
from .data.chat_template import template_for
from .data.preprocessing import DefaultPreprocessor
from .data.sources import load_source, split_dataset
from .errors import ConfigError, DatasetError, Problems, TrainingError
from .infer.generation import DefaultInferenceHandler
from .model.device import default_dtype, parse_dtype, resolve_device
from .model.facts import is_encoder_decoder
from .model.loading import RUN_CONFIG_FILE, RUN_YAML_FILE, load_pretrained, resolve_model_source
from .model.lora import SPEC_TARGET_MODULES, SPEC_TASK_TYPE
from .model.methods import prepare_model, trainable_summary
from .model.quantization import get_quantization_config
from .train import defaults as auto_defaults
from .train.guards import (STOP_FILE, NonFiniteGuard, StopFileCallback, is_out_of_memory,
                           out_of_memory_message)
from .train.meter import meter_callback
from .train.output_dir import commit_files, find_checkpoint, prepare_output_dir
from .train.report import write_report
from .train.runinfo import run_record, write_json_atomic, write_text_atomic
from .train.trainer_config import DefaultTrainerConfig

logger = logging.getLogger(__name__)

class FineTuner:
    """Load a pretrained model, adapt it (LoRA, QLoRA or full fine-tuning), train it on a
    dataset, evaluate and generate. The arguments are the spec's; any other option of
    `FinetuneConfig` may be given by name as a keyword (`method="full"`, `eval_fraction=0.1`,
    `learning_rate=1e-3`, `lora_dropout=0.1`, `adapter_path=...`, `dtype="bfloat16"`, ...).
    """

    def __init__(self, model_id: str | None = None, device: str | None = None, dataset_name=None,
                 lora_r=16, lora_alpha=32, lora_target_modules=SPEC_TARGET_MODULES,
                 lora_bias="none", preprocessor=None, lora_task_type=SPEC_TASK_TYPE,
                 max_length=1000, quantize: bool = False, quantization_config: dict | None = None,
                 trainer_config=None, inference_handler=None, **options):
        given = {k: v for k, v in locals().items() if k not in ("self", "options", "__class__")}
        self.config = build_config(given, options, FineTuner.__init__)
        cfg = self.config
        self.device = resolve_device(cfg.model.device)

        self.dataset_name = cfg.data.dataset_name
        self.max_length = cfg.generation.max_length
        self.eval_fraction = cfg.data.eval_fraction
        self.preprocessor = preprocessor if preprocessor is not None else DefaultPreprocessor(
            format=cfg.data.format, column_map=cfg.data.column_map,
            max_seq_length=cfg.data.max_seq_length, train_on_inputs=cfg.data.train_on_inputs,
            use_chat_template=cfg.data.use_chat_template)
        self.trainer_config = trainer_config if trainer_config is not None else DefaultTrainerConfig(
            **cfg.training_kwargs())
        self.inference_handler = inference_handler if inference_handler is not None else \
            DefaultInferenceHandler(**generation_settings(cfg))
        self.quantization_config = get_quantization_config(cfg.quantized, cfg.method.quantization_config)
        self.dtype = (parse_dtype(cfg.model.dtype, "dtype") if cfg.model.dtype is not None
                      else default_dtype(self.device))

        self.source = resolve_model_source(cfg.model.model_id, cfg.model.adapter_path)
        base, self.tokenizer = load_pretrained(self.source, self.device, self.dtype,
                                               self.quantization_config, cfg.model.trust_remote_code)
        from transformers import set_seed

        set_seed(cfg.training.seed)  # the adapter's initialisation is part of the run
        m = cfg.method
        targets = m.lora_target_modules
        if targets is None and m.method != "full":  # left at the default: the rule's choice
            targets = auto_defaults.choose_defaults(m.method, None)["lora"]["target_modules"]
        self._lora_targets = None if self.source.adapter_path else targets
        self.model = prepare_model(
            base, m.method, quantized=self.quantization_config is not None,
            adapter_path=self.source.adapter_path,
            lora_settings=dict(r=m.lora_r, alpha=m.lora_alpha, dropout=m.lora_dropout, bias=m.lora_bias,
                               target_modules=targets, task_type=m.lora_task_type,
                               use_rslora=m.use_rslora))
        trainable, total = trainable_summary(self.model)
        logger.info("Model %s on %s, method %s%s: %s trainable parameters of %s (%.2f%%).",
                    self.source.source, self.device, m.method, self._bits_note(), f"{trainable:,}",
                    f"{total:,}", 100 * trainable / max(total, 1))
        self.tokenized_dataset = None
        self.eval_dataset = None
        self.raw_eval_dataset = None
        self.data_stats: dict = {}
        self.chosen_defaults: dict = {}

    @classmethod
    def from_config(cls, config: FinetuneConfig, **objects) -> "FineTuner":
        """A FineTuner from a `FinetuneConfig` (what `finetune train --config x.yaml` builds);
        `objects` may carry a preprocessor, trainer_config or inference_handler."""
        # Only options that differ from the defaults are passed, so that a run folder given as
        # model_id keeps its own saved settings (method, quantization, max_length, ...).
        defaults = FinetuneConfig().to_flat()
        changed = {k: v for k, v in config.to_flat().items() if k not in defaults or v != defaults[k]}
        return cls(**changed, **objects)

    # -- small helpers --------------------------------------------------------------------
    def _bits(self) -> int:
        q = self.quantization_config
        return 0 if q is None else (4 if q.load_in_4bit else 8)

    def _bits_note(self) -> str:
        return f", {self._bits()}-bit" if self._bits() else ""

    def __repr__(self) -> str:
        parts = [f"model={self.source.source!r}", f"device={self.device!r}",
                 f"method={self.config.method.method!r}"]
        if self._bits():
            parts.append(f"{self._bits()}-bit")
        peft_config = getattr(self.model, "peft_config", {}).get("default")
        if peft_config is not None:
            t = peft_config.target_modules
            parts.append(f"lora_r={peft_config.r}, lora_alpha={peft_config.lora_alpha}, "
                         f"targets={t if isinstance(t, str) else sorted(t)}")
        if isinstance(self.dataset_name, (str, os.PathLike)):
            parts.append(f"dataset={str(self.dataset_name)!r}")
        return f"FineTuner({', '.join(parts)})"

    @property
    def is_encoder_decoder(self) -> bool:
        return is_encoder_decoder(self.model.config)

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
        `self.eval_dataset` (tokenized) and `self.raw_eval_dataset` (as given)."""
        if self.dataset_name is None:
            raise ConfigError("preprocess_data() needs a dataset: pass FineTuner(dataset_name=...), "
                              "e.g. dataset_name='dialogue' or a path to a .jsonl file.")
        train, eval_set = split_dataset(load_source(self.dataset_name), self.eval_fraction,
                                        self.config.training.seed)
        self._install_chat_template(train)
        self.data_stats = {}
        self.tokenized_dataset = self._tokenize(train, "train")
        self.raw_eval_dataset = eval_set
        self.eval_dataset = self._tokenize(eval_set, "eval") if eval_set is not None else None
        return self.tokenized_dataset

    def _install_chat_template(self, train) -> None:
        """The one chat-template decision (`data.chat_template.template_for`), put on the
        tokenizer before tokenizing so training, generation and the saved tokenizer agree."""
        data_format = getattr(self.preprocessor, "data_format", None)
        if data_format is None:
            return
        self.tokenizer.chat_template = template_for(self.tokenizer, self.model.config, data_format(train))

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

    def train(self, output_dir: str | None = None, num_train_epochs: float | None = None, *,
              eval_before: bool | None = None, resume_from_checkpoint=None,
              overwrite_output_dir: bool | None = None) -> dict:
        """Fine-tune on the dataset; save the adapter (or full model), tokenizer, run config and
        report in `output_dir`. Arguments left out come from the configuration. Returns the
        training metrics, and with an eval split the evaluation metrics (`eval_loss`, ...);
        with `eval_before=True` also `before` and `after` evaluations.

        `resume_from_checkpoint=True` continues an interrupted run from the latest
        `checkpoint-*` in `output_dir` (or from the checkpoint folder given): adapter, optimizer,
        scheduler, RNG and data position are restored. A folder that holds another run is
        refused unless `overwrite_output_dir=True` (its contents are deleted first)."""
        problems = Problems("FineTuner.train")
        from .config import check_number

        check_number(problems, "num_train_epochs", num_train_epochs)
        for name, value in (("eval_before", eval_before), ("overwrite_output_dir", overwrite_output_dir)):
            if value is not None and not isinstance(value, bool):
                problems.add(name, value, "must be True or False.")
        problems.raise_if_any()
        if eval_before is None:
            eval_before = self.config.training.eval_before
        if overwrite_output_dir is None:
            overwrite_output_dir = self.config.training.overwrite_output_dir
        if self.tokenized_dataset is None:
            self.preprocess_data()  # may raise on bad data: nothing has been written yet
        method = "qlora" if self._bits() else self.config.method.method
        epochs = num_train_epochs if num_train_epochs is not None else \
            getattr(self.trainer_config, "training_args", {}).get("num_train_epochs")
        self.chosen_defaults = auto_defaults.choose_defaults(
            method, len(self.tokenized_dataset), epochs, replay=self._replay_possible(),
            n_tokens=_token_count(self.tokenized_dataset))
        args = self._training_arguments(output_dir, num_train_epochs)
        resume = _resume_value(resume_from_checkpoint if resume_from_checkpoint is not None
                               else args.resume_from_checkpoint)
        out = prepare_output_dir(args.output_dir, resume=resume is not None,
                                 overwrite=overwrite_output_dir, main_process=args.process_index == 0)
        checkpoint = find_checkpoint(out, resume)
        started = time.time()
        before = self.evaluate() if eval_before and self.raw_eval_dataset is not None else None
        train_set = self._with_self_replay(self.tokenized_dataset, self.chosen_defaults["replay_rows"])
        trainer = self.trainer_config.build_trainer(
            model=self.model, args=args, tokenizer=self.tokenizer,
            train_dataset=train_set, eval_dataset=self.eval_dataset,
            encoder_decoder=self.is_encoder_decoder)
        trainer.add_callback(meter_callback(self.model, train_set, out, self.dtype, self.device))
        trainer.add_callback(NonFiniteGuard(self.model, out))
        stopper = StopFileCallback(out)
        trainer.add_callback(stopper)
        if args.process_index == 0:  # the settings first: a crashed run can be resumed from them
            write_text_atomic(out / RUN_YAML_FILE, self.resolved_config(args, out).to_yaml())
        if checkpoint:
            logger.info("Resuming from %s.", checkpoint)
        try:
            metrics = dict(trainer.train(resume_from_checkpoint=checkpoint).metrics)
        except Exception as exc:
            if is_out_of_memory(exc):
                raise TrainingError(out_of_memory_message(exc, args)) from exc
            raise
        after = None
        if self.eval_dataset is not None:
            metrics.update(trainer.evaluate())
            if eval_before:
                after = self.evaluate()
                metrics.update(before=before, after=after)
        if stopper.stopped_at is not None:
            metrics["stopped_at_step"] = stopper.stopped_at
            logger.info("Stopped on request (%s) at step %d; a checkpoint was saved.", STOP_FILE,
                        stopper.stopped_at)
        state_dict = _gathered_state_dict(trainer)  # sharded weights: every process takes part
        if args.process_index != 0:  # one process writes; the others end here
            return metrics
        record = self.save(out, training_args=args, metrics=metrics, state_dict=state_dict)
        record["wall_seconds"] = round(time.time() - started, 1)
        paths = write_report(out, record, before, after)
        logger.info("Run report: %s", paths["report"])
        return metrics

    def _replay_possible(self) -> bool:
        """Self-replay needs a decoder-only chat model (its answers to chat prompts) and the
        default preprocessor (which knows how to tokenize prompt/completion rows)."""
        return bool(self.config.training.self_replay and not self.is_encoder_decoder
                    and getattr(self.tokenizer, "chat_template", None)
                    and isinstance(self.preprocessor, DefaultPreprocessor))

    def _with_self_replay(self, train_set, n: int):
        """`train_set` plus up to `n` rows of the model's own answers to general prompts
        (`data.replay`), generated now, before any update; answers that hit the length limit
        are left out (a cut-off answer would teach the model to stop mid-sentence)."""
        if n <= 0:
            return train_set
        import datasets

        from .data.replay import REPLAY_MAX_NEW_TOKENS, self_replay_rows

        def answers(prompts):
            outs = self.inference_handler.generate_batch(prompts, self.model, self.tokenizer,
                                                         self.device, REPLAY_MAX_NEW_TOKENS)
            return [o.text if o.finished_with_eos else None for o in outs]

        rows = self_replay_rows(answers, n, batched=True)
        self.data_stats["self_replay_rows"] = len(rows)
        logger.info("Self-replay: %d of the model's own answers to general prompts added to %d "
                    "training rows.", len(rows), len(train_set))
        if not rows:
            return train_set
        replay = DefaultPreprocessor(use_chat_template=True)(
            datasets.Dataset.from_list(rows), self.tokenizer, self.model.config)
        return datasets.concatenate_datasets([train_set, replay.select_columns(train_set.column_names)])

    def _training_arguments(self, output_dir, num_train_epochs):
        call = self.trainer_config.training_arguments
        kwargs = dict(output_dir=output_dir, num_train_epochs=num_train_epochs,
                      encoder_decoder=self.is_encoder_decoder, device=self.device)
        if "defaults" in inspect.signature(call).parameters:
            kwargs["defaults"] = self.chosen_defaults["training"]
        args = call(**kwargs)
        if args.num_train_epochs <= 0 and args.max_steps <= 0:
            raise ConfigError(f"num_train_epochs={args.num_train_epochs!r} must be a positive number, e.g. 3.")
        chosen = {k: getattr(args, k) for k in self.chosen_defaults["training"]}
        logger.info("Training settings for %d examples (%s): %s", len(self.tokenized_dataset),
                    self.chosen_defaults["rule"], ", ".join(f"{k}={v}" for k, v in chosen.items()))
        return args

    # -- extras ---------------------------------------------------------------------------
    def evaluate(self, dataset=None, *, max_new_tokens: int | None = None, batch_size: int = 16,
                 limit: int | None = None) -> dict:
        """Loss and perplexity on the eval split (or `dataset`), and on rows with a reference
        answer, generation metrics: exact match, chrF, and the share of generations that ended
        with EOS. Generation is batched and uses the same chat template as training.
        `max_new_tokens` defaults to twice the longest reference plus 8, capped by max_length."""
        from .infer.evaluate import evaluate_split

        if dataset is None:
            if self.tokenized_dataset is None and self.dataset_name is not None:
                self.preprocess_data()
            raw, tokenized = self.raw_eval_dataset, self.eval_dataset
            if raw is None:
                raise DatasetError("evaluate() has no eval split: the dataset has no validation "
                                   "split; pass evaluate(dataset=...) or FineTuner(eval_fraction=0.1).")
        else:
            train, held_out = split_dataset(load_source(dataset, name="dataset"))
            raw = held_out if held_out is not None else train  # a DatasetDict: its validation split
            tokenized = self._tokenize(raw, "evaluate")
        if limit is not None:
            raw = raw.select(range(min(limit, len(raw))))
            tokenized = tokenized.select(range(min(limit, len(tokenized))))
        return evaluate_split(self, raw, tokenized, max_new_tokens=max_new_tokens, batch_size=batch_size)

    def save(self, output_dir, training_args=None, metrics: dict | None = None, *,
             state_dict: dict | None = None) -> dict:
        """Save the adapter (PEFT safetensors; the whole model for method='full'), the tokenizer,
        the resolved `config.yaml` and `finetuner_config.json`. Everything is written to a
        staging folder first and moved into place with `finetuner_config.json` last: its
        presence marks a complete save. Files of an earlier save that this one does not write
        (e.g. an old chat template) are removed, so runs never mix."""
        out = _check_output_dir(output_dir)
        staging = out / ".saving"
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        try:
            extra = {"state_dict": state_dict} if state_dict is not None else {}
            self.model.save_pretrained(staging, safe_serialization=True, **extra)
            self.tokenizer.save_pretrained(staging)
            resolved = self.resolved_config(training_args, out)
            write_text_atomic(staging / RUN_YAML_FILE, resolved.to_yaml())
            record = run_record(self, resolved, training_args, metrics)
            record["files"] = sorted([p.name for p in staging.iterdir()] + [RUN_CONFIG_FILE])
            write_json_atomic(staging / RUN_CONFIG_FILE, record)
            commit_files(staging, out, _previous_files(out))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return record

    def export(self, path, merged: bool = True, gguf: str | None = None, overwrite: bool = False) -> dict:
        """Take the model out of the package: `merged=True` writes a plain transformers folder
        (adapter merged into the base, a 4-bit base dequantized first); `merged=False` the PEFT
        adapter alone; `gguf="f16"|"q8_0"` also a GGUF file and an Ollama Modelfile (Llama
        architectures). Returns the paths written. See `finetuning_suite.export`."""
        from .export import export_model

        return export_model(self, path, merged=merged, gguf=gguf, overwrite=overwrite)

    def resolved_config(self, training_args=None, output_dir=None) -> FinetuneConfig:
        """The configuration with automatic choices filled in, as `config.yaml` records it."""
        import copy
        import dataclasses

        cfg = copy.deepcopy(self.config)
        if not isinstance(self.dataset_name, (str, os.PathLike, type(None))):
            cfg.data.dataset_name = None  # an in-memory dataset cannot be written to YAML
        if output_dir is not None:
            cfg.training.output_dir = str(output_dir)
        if training_args is not None:
            for f in dataclasses.fields(cfg.training):
                if hasattr(training_args, f.name) and f.name != "output_dir":
                    value = getattr(training_args, f.name)
                    setattr(cfg.training, f.name, _yaml_value(value))
        # how this run was started, not a setting to repeat: a rerun from config.yaml starts afresh
        cfg.training.resume_from_checkpoint = None
        cfg.training.overwrite_output_dir = False
        peft_config = getattr(self.model, "peft_config", {}).get("default")
        if peft_config is not None and cfg.method.method != "full":
            # as chosen here ("all-linear" or names), not peft's expansion into full module paths
            t = self._lora_targets
            if t is not None:
                cfg.method.lora_target_modules = [t] if isinstance(t, str) else list(t)
            cfg.method.lora_task_type = str(getattr(peft_config.task_type, "value", peft_config.task_type))
        return cfg


def _yaml_value(value):
    value = getattr(value, "value", value)  # enums (schedulers, strategies) as their names
    if isinstance(value, (list, tuple)):
        return [getattr(v, "value", v) for v in value]
    return value


def _gathered_state_dict(trainer) -> dict | None:
    """The full weights when FSDP or DeepSpeed shard them across processes (a collective call:
    every process must make it); None when the model is whole in every process."""
    if getattr(trainer, "is_fsdp_enabled", False):
        return trainer.accelerator.get_state_dict(trainer.model)
    if getattr(trainer, "is_deepspeed_enabled", False):
        return trainer.accelerator.get_state_dict(trainer.deepspeed)
    return None


def _resume_value(value):
    """resume_from_checkpoint as None (start afresh), True (the latest checkpoint) or a path."""
    if value is None or value is False or (isinstance(value, str) and value.lower() in ("", "false", "no")):
        return None
    if value is True or (isinstance(value, str) and value.lower() in ("true", "yes", "latest")):
        return True
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    raise ConfigError(f"resume_from_checkpoint={value!r} must be True (the latest checkpoint in "
                      "output_dir) or the path of a checkpoint-N folder.")


def _previous_files(out: Path) -> list[str]:
    """The files the last complete save in `out` wrote (listed in its run record)."""
    import json

    try:
        return list(json.loads((out / RUN_CONFIG_FILE).read_text()).get("files") or [])
    except (OSError, ValueError, AttributeError):
        return []


def _check_output_dir(output_dir) -> Path:
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir={str(out)!r} is an existing file; pass a folder path.")
    return out


def _token_count(dataset) -> int | None:
    """All rows' input tokens (the epoch-count rule's time budget); None without input_ids."""
    if "input_ids" not in getattr(dataset, "column_names", ()):
        return None
    return int(sum(len(ids) for ids in dataset["input_ids"]))
