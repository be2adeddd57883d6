"""The options: five dataclass sections and `FinetuneConfig`, their whole.

Every option is a field with its default and help text, spelled as its Python name (and, for
training, as its `transformers.TrainingArguments` name). A default is written here and nowhere
else: `FineTuner`'s signature, the CLI's flags, the web page's knobs and `DefaultInferenceHandler`
read it from these classes.

`FinetuneConfig.given` holds the names a user set explicitly (a keyword argument, a flag, a YAML
key, a page box that was edited): "not given" is known by name, never by a value that happens to
equal the default, so `max_length=1000` given for a run folder saved with 16 wins.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from ..model.facts import LENGTH_CAP

AUTO = "auto: chosen from the model, the method and the dataset size when training starts"

ALL_LINEAR = "all-linear"
Method = Literal["lora", "qlora", "full"]
METHODS: tuple[str, ...] = typing.get_args(Method)
Stage = Literal["sft", "dpo", "kto", "orpo", "grpo"]
STAGES: tuple[str, ...] = typing.get_args(Stage)


def _opt(default, help_text: str):
    return field(default=default, metadata={"help": help_text})


@dataclass
class ModelArguments:
    """Which model, where, in what precision."""

    _argument_group_name = "model"  # the --help section (HfArgumentParser)

    model_id: str | None = _opt(None, "A local model folder, a .gguf file, a folder written by "
                                "train() (adapter or full model), or a hub id already in the local "
                                "HF cache. Empty: the embedded SmolLM2-135M-Instruct.")
    device: str | None = _opt(None, "cpu, cuda, cuda:N or mps. Empty: CUDA, else MPS, else CPU.")
    dtype: str | None = _opt(None, "Weights dtype (float32, bfloat16, float16). Empty: float32 on "
                             "CPU/MPS, bfloat16 on CUDA cards that support it.")
    trust_remote_code: bool = _opt(False, "Run a model repository's own Python code. Only for "
                                   "repositories you trust.")
    adapter_path: str | None = _opt(None, "A trained adapter folder to load on top of model_id.")


@dataclass
class MethodArguments:
    """How the model is adapted: LoRA, QLoRA (LoRA on a 4-bit base) or full fine-tuning."""

    _argument_group_name = "method (LoRA, QLoRA, full)"  # the --help section (HfArgumentParser)

    method: Method = _opt(
        "lora", "lora: low-rank adapters on a frozen base; qlora: the same on a 4-bit NF4 base "
        "(= quantize: true); full: every weight is trained and saved.")
    quantize: bool = _opt(False, "Load the base model in 4-bit NF4 (QLoRA). Same as method: qlora.")
    quantization_config: dict | None = _opt(
        None, "BitsAndBytesConfig fields as a mapping (or JSON on the command line), e.g. "
        '{"load_in_8bit": true}. Empty: 4-bit NF4, double quantization, bf16 compute.')
    lora_r: int = _opt(16, "LoRA rank.")
    lora_alpha: float = _opt(32, "LoRA scale numerator: the update is scaled by alpha / r (alpha / "
                             "sqrt(r) with use_rslora).")
    lora_dropout: float = _opt(0.05, "Dropout on the LoRA path.")
    lora_bias: Literal["none", "all", "lora_only"] = _opt("none", "Which biases are trained.")
    lora_target_modules: list[str] | None = _opt(
        None, "Layer names to adapt (e.g. q_proj v_proj), or all-linear. Empty: all-linear "
        "(attention and MLP; see train/defaults.py for why).")
    lora_task_type: Literal["CAUSAL_LM", "SEQ_2_SEQ_LM"] | None = _opt(
        None, "PEFT task type. Empty: from the model (SEQ_2_SEQ_LM for encoder-decoders).")
    use_rslora: bool = _opt(False, "Rank-stabilised LoRA: scale by alpha / sqrt(r).")


@dataclass
class DataArguments:
    """What to train on and how rows become tokens and labels."""

    _argument_group_name = "data"  # the --help section (HfArgumentParser)

    dataset_name: str | None = _opt(None, "A built-in name (dialogue, iso_dates, ...), a .json/.jsonl/"
                                    ".csv/.parquet/.txt file, a save_to_disk folder, or a hub dataset "
                                    "in the local cache.")
    eval_fraction: float | None = _opt(None, "Hold out this fraction of rows for evaluation when the "
                                       "dataset has no validation split (0: none). Empty: 10% of the "
                                       "rows (at most 200) from 20 rows on; smaller sets are "
                                       "evaluated on their training rows (said so in the results).")
    format: str = _opt("auto", "Data format: auto, messages, sharegpt, alpaca, prompt_completion, "
                       "input_output, source_target, question_answer or text.")
    column_map: dict | None = _opt(None, "Rename columns first, e.g. {question: prompt, answer: completion}.")
    max_seq_length: int | None = _opt(None, "Truncate longer examples. Empty: the model's context "
                                      f"window, at most {LENGTH_CAP}.")
    train_on_inputs: bool = _opt(False, "Also compute the loss on prompt / user tokens.")
    use_chat_template: bool = _opt(True, "Render prompts with the tokenizer's chat template on chat "
                                   "models, in training and generation alike.")


@dataclass
class GenerationArguments:
    """How text is generated (generate, chat, evaluation)."""

    _argument_group_name = "generation"  # the --help section (HfArgumentParser)

    max_length: int = _opt(1000, "The most new tokens a generation produces (capped so prompt + "
                           "answer fit the context window).")
    do_sample: bool = _opt(False, "Sample instead of greedy decoding.")
    temperature: float = _opt(0.7, "Sampling temperature (with do_sample).")
    top_p: float = _opt(0.9, "Nucleus sampling threshold (with do_sample).")
    top_k: int = _opt(50, "Top-k sampling (with do_sample).")
    repetition_penalty: float = _opt(1.0, "Penalty on repeated tokens (1.0: none).")
    num_beams: int = _opt(1, "Beam search width (1: no beam search).")
    system_prompt: str | None = _opt(None, "A system message put first when the chat template is used.")


@dataclass
class TrainingConfig:
    """Training, by transformers.TrainingArguments names (any other field of it is accepted too).

    Other TrainingArguments fields may be given as a YAML key or `--flag`; they are passed
    through (`FinetuneConfig.training_extras`), checked against the field's type."""

    _argument_group_name = "training (TrainingArguments names)"  # the --help section (HfArgumentParser)

    output_dir: str = _opt("trained_model", "Where the adapter (or full model), tokenizer, config "
                           "and report are written.")
    num_train_epochs: float | None = _opt(None, "Passes over the training data. Empty: " + AUTO + ".")
    max_steps: int = _opt(-1, "Stop after this many optimizer steps (-1: run the epochs).")
    per_device_train_batch_size: int | None = _opt(None, "Examples per step per device. Empty: " + AUTO + ".")
    gradient_accumulation_steps: int | None = _opt(None, "Steps whose gradients are summed before an "
                                                   "optimizer step. Empty: " + AUTO + ".")
    learning_rate: float | None = _opt(None, "Peak learning rate. Empty: " + AUTO + ".")
    lr_scheduler_type: str | None = _opt(None, "Learning-rate schedule (linear, cosine, constant, "
                                         "...). Empty: " + AUTO + ".")
    warmup_steps: float | None = _opt(None, "Warm-up steps; a value below 1 is a fraction of all "
                                      "steps. Empty: " + AUTO + ".")
    weight_decay: float = _opt(0.0, "AdamW weight decay.")
    logging_steps: float = _opt(10, "Log train loss, learning rate and throughput every N steps.")
    train_sampling_strategy: str = _opt("random", "Order of training examples: random, or "
                                        "group_by_length (batches of similar length: 1.5x faster "
                                        "on mixed lengths, but it cut a tiny model's held-out score "
                                        "from >=90% to 62%, so it is opt-in), sequential, batch_rebalance.")
    packing: bool | None = _opt(False, "Train each batch as one row without padding, the examples "
                                "kept apart by the attention (flash-attention on CUDA where the "
                                "model runs it, else SDPA once per example); position ids restart "
                                "and no example learns the next one's first token. True: refused "
                                "for models that cannot keep them apart (encoder-decoders, ...). "
                                "Empty: packed where the model can keep them apart, else padded. "
                                "sft only.")
    save_strategy: str = _opt("steps", "When to save checkpoints during training (no, steps, epoch); "
                              "the final model is always saved.")
    save_steps: float = _opt(0.25, "Save a checkpoint every N steps; a value below 1 is a fraction "
                             "of all steps (0.25: four checkpoints a run).")
    save_total_limit: int | None = _opt(2, "Keep at most this many checkpoints (the oldest are "
                                        "deleted). Empty: keep all.")
    resume_from_checkpoint: str | None = _opt(None, "Continue an interrupted run: 'true' (the latest "
                                              "checkpoint-* in output_dir) or a checkpoint folder.")
    overwrite_output_dir: bool = _opt(False, "Allow output_dir to hold another run: its contents "
                                      "are deleted before training. Without it such a folder is refused.")
    seed: int = _opt(42, "Seed for adapter initialisation, data order and dropout.")
    report_to: list[str] | None = _opt(None, "Experiment trackers. Empty: tensorboard when installed, "
                                       "else none.")
    eval_before: bool = _opt(False, "Evaluate before training too, and report before/after.")
    self_replay: bool = _opt(True, "Before training, add the model's own answers to a fixed list "
                             "of general prompts to the training rows (chat models), so training "
                             "keeps what the model knew; how many is chosen from the dataset size.")
    self_replay_rows: int | None = _opt(None, "How many self-replay rows. Empty: " + AUTO + ".")
    self_replay_distill: bool = _opt(False, "Train self-replay rows towards the base model's whole "
                                     "next-token distribution (its top 16 at each answer token), "
                                     "not only its answer.")
    stage: Stage = _opt("sft", "What training optimises: sft (answers to imitate), dpo / orpo "
                        "(preferred over rejected answers: prompt + chosen + rejected rows), kto "
                        "(desirable or not: prompt + completion + label rows), grpo (rewards on "
                        "the model's own answers to prompts: reward_funcs).")
    beta: float | None = _opt(None, "dpo/kto: how far from the reference model training may move "
                              "(higher: closer); orpo: the weight of the odds-ratio term; grpo: the "
                              "KL weight (0: no reference). Empty: " + AUTO + ".")
    num_generations: int | None = _opt(None, "grpo: answers sampled per prompt (the group whose "
                                       "rewards are compared). Empty: " + AUTO + ".")
    max_completion_length: int | None = _opt(None, "grpo: the most tokens of one sampled answer. "
                                             "Empty: " + AUTO + ".")
    reward_funcs: list[str] | None = _opt(None, "grpo: reward functions: exact_match[:COLUMN], "
                                          "regex:PATTERN, json, length:N or module:function "
                                          "(Python callables in the API).")
    reward_weights: list[float] | None = _opt(None, "grpo: one weight per reward function. Empty: 1 each.")
    retention_probe: bool = _opt(True, "Before and after training, ask 40 general prompts with "
                                 "checkable answers (chat models; ~30 s for a 135M model on a CPU) "
                                 "and report how many answers the model kept.")
    adapter_shrink: bool = _opt(True, "After LoRA training, scale the adapter's update down to the "
                                "smallest scale at which the training answers it learned are still "
                                "given (checked on up to 32 training rows): keeps more of what the "
                                "model knew.")


# TrainingConfig fields that are ours, not TrainingArguments fields.
NOT_TRAINING_ARGUMENTS = frozenset({"eval_before", "self_replay", "self_replay_rows", "packing",
                                    "self_replay_distill", "retention_probe", "overwrite_output_dir",
                                    "stage", "beta", "num_generations", "max_completion_length",
                                    "reward_funcs", "reward_weights", "adapter_shrink"})
STAGE_SETTINGS = ("beta", "num_generations", "max_completion_length", "reward_funcs", "reward_weights")

SECTIONS: dict[str, type] = {"model": ModelArguments, "method": MethodArguments, "data": DataArguments,
                             "generation": GenerationArguments, "training": TrainingConfig}


@functools.lru_cache(maxsize=None)
def training_argument_fields() -> dict[str, dataclasses.Field]:
    """Every `Seq2SeqTrainingArguments` init field by name (types resolved)."""
    from transformers import Seq2SeqTrainingArguments

    return _init_fields(Seq2SeqTrainingArguments)


def _init_fields(cls) -> dict[str, dataclasses.Field]:
    """A dataclass's init fields by name, their types resolved."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in fields(cls):
        if f.init:
            f.type = hints.get(f.name, f.type)
            out[f.name] = f
    return out


@functools.lru_cache(maxsize=None)
def stage_argument_fields(stage: str) -> dict[str, dataclasses.Field]:
    """The fields of the TRL config a stage trains with (`train/stages.py`); for "sft" the
    `TrainingArguments` ones. Imported on use: trl is only read when a stage or a key needs it."""
    if stage == "sft":
        return training_argument_fields()
    from ..train.stages import config_class

    return _init_fields(config_class(stage))


def pass_through_field(name: str, stage: str | None = None):
    """The TrainingArguments field `name` (or, failing that, the field of a TRL stage config:
    `stage`'s, or any stage's when `stage` is None), or None."""
    found = training_argument_fields().get(name)
    if found is not None:
        return found
    for each in ([stage] if stage else [s for s in STAGES if s != "sft"]):
        if each != "sft" and name in stage_argument_fields(each):
            return stage_argument_fields(each)[name]
    return None


def training_argument_names() -> frozenset[str]:
    return frozenset(training_argument_fields())


def field_names(section: type) -> list[str]:
    return [f.name for f in fields(section)]


@functools.lru_cache(maxsize=None)
def option_fields() -> dict[str, tuple[dataclasses.Field, Any, str]]:
    """name -> (dataclass field, resolved type, section key) for every option."""
    out = {}
    for key, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            out[f.name] = (f, hints[f.name], key)
    return out


def default_of(name: str):
    """The default value of option `name` (the one place defaults are written: this module)."""
    f = option_fields()[name][0]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def suggest(name: str, names) -> str:
    close = difflib.get_close_matches(name, list(names), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass
class FinetuneConfig:
    """The whole configuration of a run: five sections plus pass-through TrainingArguments, and
    the names the user gave explicitly (`given`)."""

    model: ModelArguments = field(default_factory=ModelArguments)
    method: MethodArguments = field(default_factory=MethodArguments)
    data: DataArguments = field(default_factory=DataArguments)
    generation: GenerationArguments = field(default_factory=GenerationArguments)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    training_extras: dict[str, Any] = field(default_factory=dict)
    given: frozenset = field(default_factory=frozenset, compare=False)

    # -- flat views (YAML, CLI, FineTuner keyword arguments) -------------------------------
    @classmethod
    def from_flat(cls, values: dict[str, Any], where: str = "config", given=None) -> "FinetuneConfig":
        """Build from a flat mapping (values as given; `checks.validate` judges them). Unknown
        keys are one error with suggestions. `given`: the names set explicitly (default: every
        key of `values`)."""
        from ..errors import ConfigError

        sections: dict[str, dict] = {key: {} for key in SECTIONS}
        extras, unknown = {}, []
        for name, value in values.items():
            owner = option_fields().get(name)
            if owner is not None:
                sections[owner[2]][name] = value
            elif pass_through_field(name) is not None:
                extras[name] = value
            else:
                unknown.append(name)
        if unknown:
            known = set(option_fields()) | training_argument_names()
            listed = ", ".join(f"{n!r}{suggest(n, known)}" for n in unknown)
            raise ConfigError(f"{where}: unknown option(s) {listed}. Options are the fields listed by "
                              "`finetune train --help` and any transformers.TrainingArguments field.")
        return cls(**{key: SECTIONS[key](**vals) for key, vals in sections.items()},
                   training_extras=extras,
                   given=frozenset(values if given is None else given))

    def to_flat(self) -> dict[str, Any]:
        flat: dict[str, Any] = {}
        for key in SECTIONS:
            flat.update(dataclasses.asdict(getattr(self, key)))
        flat.update(self.training_extras)
        return flat

    def given_flat(self) -> dict[str, Any]:
        """Only the options set explicitly, as a flat mapping."""
        return {k: v for k, v in self.to_flat().items() if k in self.given}

    def get(self, name: str):
        if name in self.training_extras:
            return self.training_extras[name]
        return getattr(getattr(self, option_fields()[name][2]), name)

    def to_yaml(self) -> str:
        """The resolved configuration as YAML, one commented block per section."""
        import yaml

        blocks = []
        for key, cls in SECTIONS.items():
            values = {k: _plain(v) for k, v in dataclasses.asdict(getattr(self, key)).items()}
            blocks.append(f"# {key}: {cls.__doc__.splitlines()[0]}\n"
                          + yaml.safe_dump(values, sort_keys=False, allow_unicode=True))
        if self.training_extras:
            extras = {k: _plain(v) for k, v in self.training_extras.items()}
            blocks.append("# other TrainingArguments\n" + yaml.safe_dump(extras, sort_keys=False))
        return "\n".join(blocks)

    # -- what training receives ------------------------------------------------------------
    def training_kwargs(self) -> dict[str, Any]:
        """The TrainingArguments values set here (None = auto is left out), extras included."""
        own = {f.name: getattr(self.training, f.name) for f in fields(TrainingConfig)
               if f.name not in NOT_TRAINING_ARGUMENTS and getattr(self.training, f.name) is not None}
        return {**own, **self.training_extras}

    @property
    def quantized(self) -> bool:
        return self.method.method == "qlora" or self.method.quantize is True

    def validate(self, where: str = "FineTuner") -> None:
        """Check every option; raise one ConfigError listing all problems (`checks.validate`)."""
        from .checks import validate

        validate(self, where)


def _plain(value):
    """A YAML-safe form of a config value (dtypes and enums as strings)."""
    from enum import Enum

    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, Enum):
        return value.value
    if hasattr(value, "__len__") and not isinstance(value, str):
        return f"<{type(value).__name__} with {len(value)} rows>"
    return str(value).removeprefix("torch.")
