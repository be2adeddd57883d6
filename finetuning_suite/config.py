"""One configuration: the dataclasses behind the Python API, the `finetune` command and YAML.

Every option is a field with its default and help text, spelled as its Python name (and, for
training, as its `transformers.TrainingArguments` name). `FineTuner(...)` builds a
`FinetuneConfig` from its arguments; `finetune train --config run.yaml --lora_r 8` builds one
from a YAML file and flags; both go through `FinetuneConfig.validate()`, which collects every
problem and raises one `ConfigError`.

YAML files are flat (as trl, axolotl and LLaMA-Factory recipes are): `model_id: ...`,
`lora_r: 8`, `num_train_epochs: 2`. Any other `TrainingArguments` field may appear too (it goes
to `training_extras`). A value of `null` on an option whose help says "auto" means: chosen from
the model, the method and the data when training starts (see `train/defaults.py`); the chosen
values are saved in the run's `config.yaml`.

The CLI parser is transformers' `HfArgumentParser` (the one trl uses): it turns these
dataclasses into argparse flags with their help, types and choices, and it is already a
dependency; `cli/main.py` adds `--config` and `--print_config` on top.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import math
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, Literal

from .errors import ConfigError, Problems

AUTO = "auto: chosen from the model, the method and the dataset size when training starts"


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

    method: Literal["lora", "qlora", "full"] = _opt(
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
                                       "dataset has no validation split.")
    format: str = _opt("auto", "Data format: auto, messages, sharegpt, alpaca, prompt_completion, "
                       "input_output, source_target, question_answer or text.")
    column_map: dict | None = _opt(None, "Rename columns first, e.g. {question: prompt, answer: completion}.")
    max_seq_length: int | None = _opt(None, "Truncate longer examples. Empty: the model's context "
                                      "window, at most 2048.")
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
    through unchanged (`FinetuneConfig.training_extras`)."""

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


# TrainingConfig fields that are ours, not TrainingArguments fields.
NOT_TRAINING_ARGUMENTS = frozenset({"eval_before", "self_replay", "overwrite_output_dir"})


SECTIONS: dict[str, type] = {"model": ModelArguments, "method": MethodArguments, "data": DataArguments,
                             "generation": GenerationArguments, "training": TrainingConfig}


@functools.lru_cache(maxsize=None)
def training_argument_names() -> frozenset[str]:
    from transformers import Seq2SeqTrainingArguments

    return frozenset(f.name for f in fields(Seq2SeqTrainingArguments) if f.init)


def field_names(section: type) -> list[str]:
    return [f.name for f in fields(section)]


@functools.lru_cache(maxsize=None)
def _owner() -> dict[str, str]:
    return {name: key for key, cls in SECTIONS.items() for name in field_names(cls)}


def suggest(name: str, names) -> str:
    close = difflib.get_close_matches(name, list(names), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass
class FinetuneConfig:
    """The whole configuration of a run: five sections plus pass-through TrainingArguments."""

    model: ModelArguments = field(default_factory=ModelArguments)
    method: MethodArguments = field(default_factory=MethodArguments)
    data: DataArguments = field(default_factory=DataArguments)
    generation: GenerationArguments = field(default_factory=GenerationArguments)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    training_extras: dict[str, Any] = field(default_factory=dict)

    # -- flat views (YAML, CLI, FineTuner keyword arguments) -------------------------------
    @classmethod
    def from_flat(cls, values: dict[str, Any], where: str = "config") -> "FinetuneConfig":
        """Build from a flat mapping; unknown keys are one error with suggestions."""
        sections: dict[str, dict] = {key: {} for key in SECTIONS}
        extras, unknown = {}, []
        for name, value in values.items():
            owner = _owner().get(name)
            if owner is not None:
                sections[owner][name] = value
            elif name in training_argument_names():
                extras[name] = value
            else:
                unknown.append(name)
        if unknown:
            known = set(_owner()) | training_argument_names()
            listed = ", ".join(f"{n!r}{suggest(n, known)}" for n in unknown)
            raise ConfigError(f"{where}: unknown option(s) {listed}. Options are the fields listed by "
                              "`finetune train --help` and any transformers.TrainingArguments field.")
        return cls(**{key: SECTIONS[key](**vals) for key, vals in sections.items()},
                   training_extras=extras)

    def to_flat(self) -> dict[str, Any]:
        flat: dict[str, Any] = {}
        for key in SECTIONS:
            flat.update(dataclasses.asdict(getattr(self, key)))
        flat.update(self.training_extras)
        return flat

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
        return self.method.method == "qlora" or bool(self.method.quantize)

    # -- validation ----------------------------------------------------------------------
    def validate(self, where: str = "FineTuner") -> None:
        """Check every field; raise one ConfigError listing all problems."""
        problems = Problems(where)
        check_types(problems, self)
        check_values(problems, self)
        problems.raise_if_any()


def _plain(value):
    """A YAML-safe form of a config value (dtypes and enums as strings)."""
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


# -- validation helpers -------------------------------------------------------------------
_NUMBER_HINTS = {
    "lora_r": ("int", 1, None, "the adapter rank, e.g. 16"),
    "lora_alpha": ("num", 0, None, "LoRA scale = alpha / r, e.g. 32"),
    "lora_dropout": ("num", 0, 1, "a dropout probability in [0, 1), e.g. 0.05"),
    "max_length": ("int", 1, None, "the most new tokens generate() produces, e.g. 256"),
    "max_seq_length": ("int", 2, None, "an integer >= 2, e.g. 1024"),
    "eval_fraction": ("num", 0, 1, "a fraction between 0 and 1, e.g. 0.1"),
    "num_train_epochs": ("num", 0, None, "a positive number, e.g. 3"),
    "per_device_train_batch_size": ("int", 1, None, "a positive integer, e.g. 8"),
    "gradient_accumulation_steps": ("int", 1, None, "a positive integer, e.g. 1"),
    "learning_rate": ("num", 0, None, "a positive number, e.g. 2e-4"),
    "warmup_steps": ("num", 0, None, "0 or more (below 1: a fraction of all steps), e.g. 0.03"),
    "weight_decay": ("num", 0, None, "0 or more, e.g. 0.0"),
    "logging_steps": ("num", 0, None, "a positive number, e.g. 10"),
    "save_steps": ("num", 0, None, "a positive number (below 1: a fraction of all steps), e.g. 0.25 or 500"),
    "save_total_limit": ("int", 1, None, "a positive integer, e.g. 2"),
    "temperature": ("num", 0, None, "a positive number, e.g. 0.7"),
    "top_p": ("num", 0, 1, "a number in (0, 1], e.g. 0.9"),
    "top_k": ("int", 0, None, "0 or more, e.g. 50"),
    "repetition_penalty": ("num", 0, None, "a positive number, e.g. 1.0"),
    "num_beams": ("int", 1, None, "a positive integer, e.g. 1"),
}
_STRICT_MIN = {"lora_alpha", "num_train_epochs", "learning_rate", "logging_steps", "save_steps", "temperature",
               "top_p", "repetition_penalty", "eval_fraction"}
_MAX_INCLUSIVE = {"top_p"}


def check_number(problems: Problems, name: str, value) -> None:
    """Type, finiteness and range of one numeric option (None means unset/auto and passes)."""
    if value is None or name not in _NUMBER_HINTS:
        return
    kind, low, high, hint = _NUMBER_HINTS[name]
    ok_type = (isinstance(value, int) if kind == "int" else isinstance(value, (int, float)))
    if isinstance(value, bool) or not ok_type:
        problems.add(name, value, f"must be {hint}.")
        return
    if not math.isfinite(value):
        problems.add(name, value, f"must be a finite number: {hint}.")
        return
    too_low = value <= low if name in _STRICT_MIN else value < low
    too_high = high is not None and (value > high if name in _MAX_INCLUSIVE else value >= high)
    if too_low or too_high:
        problems.add(name, value, f"must be {hint}.")


def check_types(problems: Problems, config: FinetuneConfig) -> None:
    for key in SECTIONS:
        for name, value in dataclasses.asdict(getattr(config, key)).items():
            check_number(problems, name, value)
    for name in ("trust_remote_code", "quantize", "train_on_inputs", "use_chat_template", "do_sample",
                 "use_rslora", "eval_before", "self_replay", "overwrite_output_dir"):
        value = _get(config, name)
        if not isinstance(value, bool):
            problems.add(name, value, "must be true or false.")
    for name in ("model_id", "adapter_path", "system_prompt"):
        value = _get(config, name)
        if value is not None and not isinstance(value, str) and not hasattr(value, "__fspath__"):
            problems.add(name, value, "must be a string (a name or a path).")
    column_map = config.data.column_map
    if column_map is not None and not isinstance(column_map, dict):
        problems.add("column_map", column_map, "must be a mapping of old to new column names, e.g. "
                     "{question: prompt, answer: completion}.")


def check_values(problems: Problems, config: FinetuneConfig) -> None:
    m = config.method
    if m.method not in ("lora", "qlora", "full"):
        problems.add("method", m.method, "must be one of 'lora', 'qlora', 'full'.")
    if m.method == "full" and m.quantize:
        problems.add("method", m.method, "full fine-tuning cannot train a quantized (4-bit) model; "
                     "use method='qlora', or quantize=False.")
    if m.quantization_config is not None and not config.quantized:
        problems.add("quantization_config", m.quantization_config,
                     "is given but quantize=False; pass quantize=True to use it.")
    if m.lora_bias not in ("none", "all", "lora_only"):
        problems.add("lora_bias", m.lora_bias, "must be one of ['none', 'all', 'lora_only'].")
    fmt = config.data.format
    from .data.formats import FORMATS

    if fmt != "auto" and fmt not in FORMATS:
        problems.add("format", fmt, f"must be 'auto' or one of {list(FORMATS)}.")
    t = config.training
    if not isinstance(t.output_dir, str) or not t.output_dir:
        problems.add("output_dir", t.output_dir, "must be a folder path, e.g. runs/my_run.")
    if isinstance(t.max_steps, bool) or not isinstance(t.max_steps, int):
        problems.add("max_steps", t.max_steps, "must be an integer (-1: run the epochs).")
    if isinstance(t.seed, bool) or not isinstance(t.seed, int):
        problems.add("seed", t.seed, "must be an integer, e.g. 42.")
    for name, value in config.training_extras.items():
        if isinstance(value, float) and not math.isfinite(value):
            problems.add(name, value, "must be a finite number.")


def _get(config: FinetuneConfig, name: str):
    return getattr(getattr(config, _owner()[name]), name)


def parse_yaml_mapping(text: str, where: str, fix: str) -> dict:
    """The flat option mapping in YAML `text` (empty: {}); ConfigError naming `where`, the line
    and column, and `fix` when it does not parse or is not a mapping."""
    import yaml

    try:
        data = yaml.safe_load(text or "")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{where}:{at}: not valid YAML ({getattr(exc, 'problem', None) or exc}). "
                          f"{fix}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a mapping of option: value (as `finetune train "
                          f"--print_config` writes it), got a {type(data).__name__}.")
    return data
