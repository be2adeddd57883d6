"""`FineTuner`: the facade of the spec (`shared/spec/finetuner-class.md`).

It only wires the pieces together: `arguments` (its arguments -> one validated configuration),
`model` (loading, quantization, LoRA / full fine-tuning), `data` (dataset -> splits, the chat
format, tokens and labels, self-replay), `train` (defaults, arguments, the Trainer, guards,
saving, the report) and `infer` (generation, evaluation). Each plug-in point is an object the
caller may pass.

    from finetuning_suite import FineTuner
    ft = FineTuner()                               # embedded SmolLM2-135M-Instruct, device auto
    print(ft("What is the capital of France?"))
"""
from __future__ import annotations

import logging
import os
import time

from .arguments import build_config, records_given
from .config import FinetuneConfig, MethodArguments, check_number
from .data.chat_template import ChatFormat, tokenizer_with_template
from .data.prepare import PreparedData, prepare_data, prepare_stage_data, tokenize
from .data.preprocessing import DefaultPreprocessor
from .data.replay import REPLAY_MAX_NEW_TOKENS, replay_dataset
from .data.sources import load_source, split_dataset
from .errors import ConfigError, DatasetError, Problems
from .infer.answer_cache import cached_answers
from .infer.generation import finished_answers
from .infer.retention import answer, probe_items, retention, score
from .infer.stage_eval import evaluate_stage
from .model.facts import is_encoder_decoder
from .model.loading import load_pretrained
from .model.lora import SPEC_TARGET_MODULES, SPEC_TASK_TYPE
from .model.methods import prepare_model, trainable_summary
from .run_settings import RunSettings
from .train import defaults as auto_defaults
from .train.distill import add_teacher_targets, without_targets
from .train.estimate import before_training
from .train.rewards import no_signal_warning, reward_functions
from .train.shrink import shrink_adapter
from .train.stages import drop_reference_adapter, stage_settings
from .train.guards import NonFiniteGuard, StopFileCallback, run_trainer
from .train.loss import uses_labelled_loss
from .train.meter import meter_callback
from .train.output_dir import prepare_output_dir, resolve_resume, resume_requested
from .train.report import write_report
from .train.runinfo import resolved_config, run_record, write_text_atomic
from .train.saving import gathered_state_dict, output_folder, save_run
from .train.trainer_config import DefaultTrainerConfig

logger = logging.getLogger(__name__)
_M = MethodArguments  # the defaults the spec's signature shows are the configuration's


class FineTuner:
    """Load a pretrained model, adapt it (LoRA, QLoRA or full fine-tuning), train it on a
    dataset, evaluate and generate. The arguments are the spec's; any other option of
    `FinetuneConfig` may be given by name as a keyword (`method="full"`, `eval_fraction=0.1`,
    `learning_rate=1e-3`, `lora_dropout=0.1`, `adapter_path=...`, `dtype="bfloat16"`, ...).
    An argument given explicitly always wins, also over a run folder's saved settings.
    """

    @records_given
    def __init__(self, model_id: str | None = None, device: str | None = None, dataset_name=None,
                 lora_r=_M.lora_r, lora_alpha=_M.lora_alpha, lora_target_modules=SPEC_TARGET_MODULES,
                 lora_bias=_M.lora_bias, preprocessor=None, lora_task_type=SPEC_TASK_TYPE,
                 max_length=1000, quantize: bool = False, quantization_config: dict | None = None,
                 trainer_config=None, inference_handler=None, **options):
        self.config = cfg = build_config(self._given)
        self.dataset_name = cfg.data.dataset_name
        self.eval_fraction = cfg.data.eval_fraction
        self.preprocessor = preprocessor if preprocessor is not None else DefaultPreprocessor(
            format=cfg.data.format, column_map=cfg.data.column_map,
            max_seq_length=cfg.data.max_seq_length, train_on_inputs=cfg.data.train_on_inputs,
            use_chat_template=cfg.data.use_chat_template)
        self.trainer_config = trainer_config if trainer_config is not None else DefaultTrainerConfig(
            stage=cfg.training.stage, reward_funcs=cfg.training.reward_funcs, packing=cfg.training.packing,
            **cfg.training_kwargs(), **stage_settings(cfg))
        self.settings = settings = RunSettings.of_config(cfg)
        self.max_length = settings.max_length
        self.device, self.dtype = settings.device, settings.dtype
        self.quantization_config, self.source = settings.quantization_config, settings.source
        base, self.tokenizer = load_pretrained(self.source, self.device, self.dtype,
                                               self.quantization_config, cfg.model.trust_remote_code)
        from transformers import set_seed

        set_seed(cfg.training.seed)  # the adapter's initialisation is part of the run
        m = cfg.method
        targets = m.lora_target_modules
        if targets is None and m.method != "full":  # not given: the rule's choice
            targets = auto_defaults.LORA_TARGETS
        self._lora_targets = None if self.source.adapter_path else targets
        self.model = prepare_model(
            base, m.method, quantized=self.quantization_config is not None,
            adapter_path=self.source.adapter_path,
            lora_settings=dict(r=m.lora_r, alpha=m.lora_alpha, dropout=m.lora_dropout, bias=m.lora_bias,
                               target_modules=targets, task_type=m.lora_task_type,
                               use_rslora=m.use_rslora))
        self._own_handler = inference_handler is None
        self.chat_format = settings.chat_format(self.tokenizer, self.model.config)
        self.inference_handler = inference_handler if inference_handler is not None else \
            settings.inference_handler(self.chat_format)
        trainable, total = trainable_summary(self.model)
        logger.info("Model %s on %s, method %s%s: %s trainable parameters of %s (%.2f%%).",
                    self.source.source, self.device, m.method, self._bits_note(), f"{trainable:,}",
                    f"{total:,}", 100 * trainable / max(total, 1))
        self.prepared: PreparedData | None = None
        self.chosen_defaults: dict = {}

    @classmethod
    def from_config(cls, config: FinetuneConfig, **objects) -> "FineTuner":
        """A FineTuner from a `FinetuneConfig` (what `finetune train --config x.yaml` builds);
        `objects` may carry a preprocessor, trainer_config or inference_handler. The options the
        config was given are passed as given (a run folder's settings yield to them)."""
        return cls(**config.given_flat(), **objects)

    # -- what preprocessing made (kept as the attributes the spec's users read) ------------
    @property
    def tokenized_dataset(self):
        return self.prepared.train if self.prepared else None

    @property
    def eval_dataset(self):
        return self.prepared.eval if self.prepared else None

    @property
    def raw_eval_dataset(self):
        return self.prepared.raw_eval if self.prepared else None

    @property
    def data_stats(self) -> dict:
        return self.prepared.stats if self.prepared else {}

    # -- small helpers --------------------------------------------------------------------
    def _bits(self) -> int:
        return self.settings.bits

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
    def stage(self) -> str:
        return self.config.training.stage

    @property
    def is_encoder_decoder(self) -> bool:
        return is_encoder_decoder(self.model.config)

    def _use_chat_format(self, fmt: ChatFormat) -> None:
        """From now on prompts are rendered as `fmt` (the model was trained with it)."""
        if fmt != self.chat_format and fmt.fallback:
            logger.info("The tokenizer has no chat template; the model is trained with a plain "
                        "'role: content' one, which generation now uses too (and the run folder "
                        "saves with the tokenizer).")
        self.chat_format = fmt
        if self._own_handler:
            self.inference_handler = self.inference_handler.with_chat_format(fmt)

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
        """Load `dataset_name`, split it (its validation split, `eval_fraction`, or for a set
        without one: 10% held out from 20 rows on, else its training rows; see
        `data.sources.split_for_training`), tokenize it with the preprocessor and return the
        tokenized training `Dataset`. Nothing else changes: `generate()` answers as before."""
        if self.dataset_name is None:
            raise ConfigError("preprocess_data() needs a dataset: pass FineTuner(dataset_name=...), "
                              "e.g. dataset_name='dialogue' or a path to a .jsonl file.")
        if self.stage != "sft":  # rows as TRL's trainer reads them; it tokenizes them itself
            self.prepared = prepare_stage_data(
                self.dataset_name, self.stage, self.tokenizer, self.model.config,
                eval_fraction=self.eval_fraction, seed=self.config.training.seed,
                use_chat_template=self.config.data.use_chat_template,
                column_map=self.config.data.column_map, system_prompt=self.config.generation.system_prompt)
            logger.info("Evaluation uses %s.", self.prepared.split.note)
            return self.prepared.train
        self.prepared = prepare_data(
            self.dataset_name, self.preprocessor, self.tokenizer, self.model.config,
            eval_fraction=self.eval_fraction, seed=self.config.training.seed,
            use_chat_template=self.config.data.use_chat_template,
            system_prompt=self.config.generation.system_prompt)
        logger.info("Evaluation uses %s.", self.prepared.split.note)
        return self.prepared.train

    def _prepared_for_now(self) -> PreparedData:
        """The prepared data of the current `dataset_name` (prepared again if it changed)."""
        if self.prepared is None or self.prepared.source is not self.dataset_name:
            if self.prepared is not None:
                logger.info("dataset_name changed since preprocess_data(); preparing %r.",
                            self.dataset_name)
            self.preprocess_data()
        return self.prepared

    def train(self, output_dir: str | None = None, num_train_epochs: float | None = None, *,
              eval_before: bool | None = None, resume_from_checkpoint=None,
              overwrite_output_dir: bool | None = None) -> dict:
        """Fine-tune on the dataset; save the adapter (or full model), tokenizer, run config and
        report in `output_dir`. Arguments left out come from the configuration. Returns the
        training metrics and the evaluation metrics (`eval_loss`, ...; see `preprocess_data` for
        which rows); with `eval_before=True` also `before` and `after` evaluations.

        `resume_from_checkpoint=True` continues an interrupted run from the latest
        `checkpoint-*` in `output_dir` (or from the checkpoint folder given): adapter, optimizer,
        scheduler, RNG and data position are restored. A folder that holds another run is
        refused unless `overwrite_output_dir=True` (its contents are deleted first)."""
        called = time.time()
        self._check_train_arguments(output_dir, num_train_epochs, eval_before, overwrite_output_dir)
        cfg = self.config.training
        eval_before = cfg.eval_before if eval_before is None else eval_before
        overwrite = cfg.overwrite_output_dir if overwrite_output_dir is None else overwrite_output_dir
        prepared = self._prepared_for_now()  # may raise on bad data: nothing written yet
        replay_n = self._choose_defaults(prepared, num_train_epochs)
        args = self._training_arguments(output_dir, num_train_epochs, prepared)
        checkpoint_wanted = resume_from_checkpoint if resume_from_checkpoint is not None \
            else args.resume_from_checkpoint
        out = prepare_output_dir(args.output_dir, resume=resume_requested(checkpoint_wanted) is not None,
                                 overwrite=overwrite, main_process=args.process_index == 0)
        checkpoint = resolve_resume(out, checkpoint_wanted)
        started = time.time()
        self._use_chat_format(prepared.chat_format)  # what the model is trained with
        evaluated = prepared.eval is not None and (eval_before or self.stage != "sft")  # stages: always
        before = self._evaluate_prepared(prepared) if evaluated else None
        probe = self._probe_items(prepared) if args.process_index == 0 else []
        probe_before = self._probe(probe, cache=True)
        train_set = self._with_replay(prepared.train, replay_n)
        trainer = self.trainer_config.build_trainer(
            model=self.model, args=args, tokenizer=tokenizer_with_template(self.tokenizer, self.chat_format),
            train_dataset=train_set,
            eval_dataset=prepared.eval if prepared.split.held_out is not None else None,
            encoder_decoder=self.is_encoder_decoder)
        self.prepared.stats["packed"] = getattr(self.trainer_config, "packed", None)  # as trained
        self.estimate = before_training(self, trainer, args)  # logged; kept in the run record
        meter = meter_callback(self.model, train_set, out, args, self.device,
                               head_everywhere=not uses_labelled_loss(trainer))
        trainer.add_callback(meter)
        trainer.add_callback(NonFiniteGuard(self.model, out))
        stopper = StopFileCallback(out)
        trainer.add_callback(stopper)
        if args.process_index == 0:  # the settings first: a crashed run can be resumed from them
            write_text_atomic(out / "config.yaml", self.resolved_config(args, out).to_yaml())
        metrics = run_trainer(trainer, checkpoint, args)
        if meter.first_step_at is not None:  # what a second run on the same model should keep short
            metrics["seconds_to_first_step"] = round(meter.first_step_at - called, 1)
            logger.info("The first optimizer step began %.1f s after train() was called.",
                        metrics["seconds_to_first_step"])
        if self.stage == "grpo" and (hint := no_signal_warning(trainer.state.log_history,
                                                               args.num_generations)):
            logger.warning(hint)
            metrics["reward_signal_warning"] = hint
        drop_reference_adapter(self.model)
        if self._shrinks(args):  # before the evaluation and the probe: they measure what is saved
            shrunk = shrink_adapter(self.model, self.tokenizer, prepared.train, self.device)
            metrics["adapter_shrink"] = shrunk.to_dict()
            logger.info(shrunk.line())
        after = None
        if prepared.split.held_out is not None:
            metrics.update(trainer.evaluate())
        if evaluated:
            after = self._evaluate_prepared(prepared, reference=before)
            metrics.update(before=before, after=after, eval_split=prepared.split.kind)
        if probe:
            # a model that answered none right before has nothing to keep: no second asking
            after_replies = self._probe(probe) if any(score(probe, probe_before)) else probe_before
            kept = retention(probe, probe_before, after_replies)
            metrics["retention"] = kept.to_dict()
            logger.info("Retention probe: %s.", kept.line())
            if kept.warning():
                logger.warning(kept.warning())
        if stopper.stopped_at is not None:
            metrics["stopped_at_step"] = stopper.stopped_at
        state_dict = gathered_state_dict(trainer)  # sharded weights: every process takes part
        if args.process_index != 0:  # one process writes; the others end here
            return metrics
        record = self.save(out, training_args=args, metrics=metrics, state_dict=state_dict)
        record["wall_seconds"] = round(time.time() - started, 1)
        paths = write_report(out, record, before, after)
        logger.info("Run report: %s", paths["report"])
        return metrics

    def _check_train_arguments(self, output_dir, num_train_epochs, eval_before, overwrite_output_dir):
        problems = Problems("FineTuner.train")
        check_number(problems, "num_train_epochs", num_train_epochs)
        for name, value in (("eval_before", eval_before), ("overwrite_output_dir", overwrite_output_dir)):
            if value is not None and not isinstance(value, bool):
                problems.add(name, value, "must be True or False.")
        if output_dir is not None:
            try:
                output_folder(output_dir)
            except ConfigError as exc:
                problems.items.append(str(exc))
        max_steps = self.trainer_config_value("max_steps")
        if num_train_epochs is not None and isinstance(max_steps, int) and max_steps > 0:
            problems.add("num_train_epochs", num_train_epochs, f"has no effect: max_steps="
                         f"{max_steps} is set and decides the length of the run; pass one of the two.")
        problems.raise_if_any()

    def trainer_config_value(self, name: str):
        """A TrainingArguments field as this run's trainer config sets it (None: not set)."""
        return getattr(self.trainer_config, "training_args", {}).get(name)

    def _choose_defaults(self, prepared: PreparedData, num_train_epochs) -> int:
        """The settings chosen from the data (`train.defaults`); returns the replay row count."""
        method = "qlora" if self._bits() else self.config.method.method
        epochs = num_train_epochs if num_train_epochs is not None else self.trainer_config_value("num_train_epochs")
        self.chosen_defaults = auto_defaults.choose_defaults(
            method, len(prepared.train), epochs, replay=self._replay_possible(prepared),
            n_tokens=auto_defaults.token_count(prepared.train),
            replay_rows=self.config.training.self_replay_rows, stage=self.stage)
        return self.chosen_defaults["replay_rows"]

    def _shrinks(self, args) -> bool:
        """Whether this run ends by shrinking its adapter (`train/shrink.py`): a LoRA/QLoRA sft
        run of a decoder-only model in one process, with `adapter_shrink` on."""
        return bool(self.config.training.adapter_shrink and self.stage == "sft"
                    and self.config.method.method != "full" and not self.is_encoder_decoder
                    and args.world_size == 1)

    def _replay_possible(self, prepared: PreparedData) -> bool:
        """Self-replay needs a decoder-only chat model whose prompts are wrapped in its template
        (its answers to chat prompts) and the default preprocessor (which knows how to tokenize
        prompt/completion rows)."""
        fmt = prepared.chat_format
        return bool(self.config.training.self_replay and self.stage == "sft" and not self.is_encoder_decoder
                    and fmt.chat and fmt.wrap_text and isinstance(self.preprocessor, DefaultPreprocessor))

    def _probe_items(self, prepared: PreparedData) -> list[dict]:
        """The retention probe's prompts (`infer.retention`) when this run asks them: a decoder-
        only chat model (the prompts are conversations) and `retention_probe` on."""
        fmt = prepared.chat_format
        if not (self.config.training.retention_probe and fmt.chat and fmt.wrap_text
                and not self.is_encoder_decoder):
            return []
        return probe_items()

    def _probe(self, items: list[dict], cache: bool = False) -> list[str]:
        """The model's replies to the retention probe; `cache`: before training (the answers of
        an unchanged model are kept across runs, `infer/answer_cache.py`)."""
        if not items:
            return []
        def ask(chosen):  # one batch: 64 decoding steps for all 40, not three batches' 192
            return answer(chosen, self.model, self.tokenizer, self.device, self.chat_format,
                          batch_size=len(chosen))
        if not cache:
            return ask(items)
        from .infer.retention import PROBE_MAX_NEW_TOKENS

        replies = cached_answers("retention_probe", self.model, self.tokenizer, self.chat_format,
                                 [item["messages"] for item in items], PROBE_MAX_NEW_TOKENS,
                                 lambda _: ask(items))
        return list(replies)

    def _with_replay(self, train_set, n: int):
        """`train_set` plus up to `n` rows of the model's own answers to general prompts, made
        now, before any update (`data.replay`), rendered with the run's chat format."""
        if n <= 0:
            return train_set
        import datasets

        def answers(prompts):  # deterministic for an unchanged model: cached across runs
            return cached_answers("self_replay", self.model, self.tokenizer, self.chat_format, prompts,
                                  REPLAY_MAX_NEW_TOKENS, lambda ps: finished_answers(
                                      ps, self.model, self.tokenizer, self.device,
                                      REPLAY_MAX_NEW_TOKENS, self.chat_format))

        from .train import distill

        replay = replay_dataset(answers, n, self.tokenizer, self.model.config, self.chat_format,
                                train_set.column_names,
                                train_on_inputs=self.config.training.self_replay_distill and distill.ALL_POSITIONS)
        rows = 0 if replay is None else len(replay)
        self.prepared.stats["self_replay_rows"] = rows
        logger.info("Self-replay: %d of the model's own answers to general prompts added to %d "
                    "training rows.", rows, len(train_set))
        if replay is None:
            return train_set
        if self.config.training.self_replay_distill:
            replay, train_set = add_teacher_targets(self.model, replay, self.device), without_targets(train_set)
        return datasets.concatenate_datasets([train_set, replay])

    def _training_arguments(self, output_dir, num_train_epochs, prepared: PreparedData):
        args = self.trainer_config.training_arguments(
            output_dir=output_dir, num_train_epochs=num_train_epochs,
            encoder_decoder=self.is_encoder_decoder, device=self.device,
            defaults={**self.chosen_defaults["training"], **self.chosen_defaults.get("stage", {})})
        if args.num_train_epochs <= 0 and args.max_steps <= 0:
            raise ConfigError(f"num_train_epochs={args.num_train_epochs!r} must be a positive number, e.g. 3.")
        if str(getattr(args.eval_strategy, "value", args.eval_strategy)) != "no" \
                and prepared.split.held_out is None:
            raise ConfigError(f"eval_strategy={getattr(args.eval_strategy, 'value', args.eval_strategy)!r} "
                              f"evaluates during training, but evaluation uses {prepared.split.note}. "
                              "Pass eval_fraction=0.1 (or a dataset with a validation split), or "
                              "eval_strategy='no'.")
        chosen = {k: getattr(args, k) for k in self.chosen_defaults["training"]}
        logger.info("Training settings for %d examples (%s): %s", len(prepared.train),
                    self.chosen_defaults["rule"], ", ".join(f"{k}={v}" for k, v in chosen.items()))
        return args

    # -- extras ---------------------------------------------------------------------------
    def evaluate(self, dataset=None, *, max_new_tokens: int | None = None, batch_size: int = 16,
                 limit: int | None = None) -> dict:
        """Loss and perplexity on the evaluation rows (see `preprocess_data` for which; or on
        `dataset`), and on rows with a reference answer, generation metrics: exact match, chrF,
        and the share of generations that ended with EOS. Generation is batched and renders
        prompts as training did. `max_new_tokens` defaults to twice the longest reference plus 8,
        capped by max_length. The result's "eval_split" says which rows were used."""
        if dataset is None:
            if self.dataset_name is None:
                raise DatasetError("evaluate() has no dataset: pass FineTuner(dataset_name=...) or "
                                   "evaluate(dataset=...).")
            prepared = self._prepared_for_now()
            if prepared.eval is None:
                raise DatasetError(f"evaluate() has no rows to use: {prepared.split.note}. Pass "
                                   "evaluate(dataset=...) or FineTuner(eval_fraction=0.1).")
            return self._evaluate_prepared(prepared, max_new_tokens, batch_size, limit)
        train, held_out = split_dataset(load_source(dataset, name="dataset"))
        raw = held_out if held_out is not None else train  # a DatasetDict: its validation split
        fmt = self.prepared.chat_format if self.prepared else self.chat_format
        tokenized, _ = tokenize(self.preprocessor, raw, self.tokenizer, self.model.config, fmt)
        result = self._evaluate_rows(raw, tokenized, fmt, max_new_tokens, batch_size, limit)
        result["eval_split"] = "dataset argument"
        return result

    def _evaluate_prepared(self, prepared: PreparedData, max_new_tokens=None, batch_size=16, limit=None,
                           reference: dict | None = None):
        if self.stage != "sft":
            rows = prepared.eval.to_list()[:limit]
            t = self.config.training
            rewards = reward_functions(t.reward_funcs, t.reward_weights)[0] if self.stage == "grpo" else None
            result = evaluate_stage(self, self.stage, rows, reference=reference,
                                    beta=self.chosen_defaults.get("stage", {}).get("beta") or t.beta or 0.1,
                                    reward_funcs=rewards,
                                    max_new_tokens=max_new_tokens or min(self.max_length, 64))
            result["eval_split"] = prepared.split.kind
            return result
        result = self._evaluate_rows(prepared.raw_eval, prepared.eval, prepared.chat_format,
                                     max_new_tokens, batch_size, limit)
        result["eval_split"] = prepared.split.kind
        return result

    def _evaluate_rows(self, raw, tokenized, chat_format, max_new_tokens, batch_size, limit):
        from .infer.evaluate import evaluate_split

        if limit is not None:
            raw = raw.select(range(min(limit, len(raw))))
            tokenized = tokenized.select(range(min(limit, len(tokenized))))
        return evaluate_split(self, raw, tokenized, chat_format=chat_format,
                              max_new_tokens=max_new_tokens, batch_size=batch_size)

    def save(self, output_dir, training_args=None, metrics: dict | None = None, *,
             state_dict: dict | None = None) -> dict:
        """Save the adapter (PEFT safetensors; the whole model for method='full'), the tokenizer
        (with the chat template the model was trained with), the resolved `config.yaml` and
        `finetuner_config.json`, staged so the folder never holds a partial save
        (`train.saving`)."""
        out = output_folder(output_dir)
        resolved = self.resolved_config(training_args, out)
        return save_run(out, model=self.model,
                        tokenizer=tokenizer_with_template(self.tokenizer, self.chat_format),
                        config_yaml=resolved.to_yaml(),
                        record=run_record(self, resolved, training_args, metrics),
                        state_dict=state_dict)

    def export(self, path, merged: bool = True, gguf: str | None = None, overwrite: bool = False) -> dict:
        """Take the model out of the package: `merged=True` writes a plain transformers folder
        (adapter merged into the base, a 4-bit base dequantized first); `merged=False` the PEFT
        adapter alone; `gguf="f16"|"bf16"|"q8_0"|"q6_k"|"q5_k_m"|"q4_k_m"` also a GGUF file and
        an Ollama Modelfile (Llama, Mistral, Qwen2/3, Gemma 2/3, Phi-3; the k-quants need the
        `gguf` extra). Returns the paths written. See `finetuning_suite.export`."""
        from .export import export_model

        return export_model(self, path, merged=merged, gguf=gguf, overwrite=overwrite)

    def resolved_config(self, training_args=None, output_dir=None) -> FinetuneConfig:
        """The configuration with automatic choices filled in, as `config.yaml` records it."""
        return resolved_config(self.config, training_args=training_args, output_dir=output_dir,
                               dataset_name=self.dataset_name, lora_targets=self._lora_targets,
                               peft_config=getattr(self.model, "peft_config", {}).get("default"))
