"""From `dataset_name` to the rows a run trains and evaluates on: `prepare_data`.

One call loads the source (`sources`), splits it for the run (`sources.split_for_training`: a
validation split, rows held out, or a small set's own training rows, said so), decides the
chat format for this model, tokenizer and data format (`chat_template.decide_chat_format`), and
tokenizes each split with the preprocessor, checking that what comes back is what the trainer
consumes. The result is a `PreparedData`; nothing shared (the tokenizer, the model config) is
changed along the way.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import DatasetError
from .chat_template import ChatFormat, decide_chat_format
from .preprocessing import DefaultPreprocessor
from .sources import Split, load_source, split_for_training


@dataclass
class PreparedData:
    """The tokenized splits of one dataset for one model, and how they were made.

    source: `dataset_name` as it was given (a run checks it is still the one asked for);
    split: which rows evaluation uses and why (`sources.Split`); train / eval: tokenized rows
    (eval: None without an evaluation split); raw_eval: the eval rows as given; chat_format:
    how prompts were rendered; stats: the preprocessor's counts per split ("train", "eval").
    """

    source: object
    split: Split
    train: object
    eval: object | None
    raw_eval: object | None
    chat_format: ChatFormat
    stats: dict = field(default_factory=dict)


def data_chat_format(preprocessor, rows, tokenizer, model_config, *, use_chat_template: bool,
                     system_prompt: str | None) -> ChatFormat:
    """The chat format for training on `rows`: the format the preprocessor reads them as (a
    custom preprocessor's data format is unknown: the model's own decision)."""
    reader = getattr(preprocessor, "data_format", None)
    data_format = reader(rows) if callable(reader) else None
    return decide_chat_format(tokenizer, model_config, data_format=data_format,
                              use_chat_template=use_chat_template, system_prompt=system_prompt)


def tokenize(preprocessor, rows, tokenizer, model_config, chat_format: ChatFormat):
    """`rows` through the preprocessor (the default one is handed the chat format; a custom one
    gets the spec's three arguments), checked to be what the trainer consumes. Returns
    (tokenized dataset, the preprocessor's stats)."""
    if isinstance(preprocessor, DefaultPreprocessor):
        dataset = preprocessor(rows, tokenizer, model_config, chat_format=chat_format)
    else:
        dataset = preprocessor(rows, tokenizer, model_config)
    columns = getattr(dataset, "column_names", None)
    if columns is None or not {"input_ids", "labels"} <= set(columns):
        raise DatasetError(
            f"{type(preprocessor).__name__} returned {type(dataset).__name__} with columns "
            f"{columns}; a preprocessor must return a datasets.Dataset with 'input_ids' and "
            "'labels' (-100 where no loss is wanted)."
        )
    return dataset, dict(getattr(preprocessor, "stats", None) or {})


def prepare_data(dataset_name, preprocessor, tokenizer, model_config, *, eval_fraction=None,
                 seed: int = 42, use_chat_template: bool = True,
                 system_prompt: str | None = None) -> PreparedData:
    """Load, split and tokenize `dataset_name` for training (see the module docstring)."""
    split = split_for_training(load_source(dataset_name), eval_fraction, seed)
    chat_format = data_chat_format(preprocessor, split.train, tokenizer, model_config,
                                   use_chat_template=use_chat_template, system_prompt=system_prompt)
    train, stats = tokenize(preprocessor, split.train, tokenizer, model_config, chat_format)
    all_stats = {"train": stats, "split": split.kind}
    tokenized_eval = None
    if split.kind == "training_rows":
        tokenized_eval = train
    elif split.eval is not None:
        tokenized_eval, all_stats["eval"] = tokenize(preprocessor, split.eval, tokenizer,
                                                     model_config, chat_format)
    return PreparedData(dataset_name, split, train, tokenized_eval, split.eval, chat_format, all_stats)


def prepare_stage_data(dataset_name, stage: str, tokenizer, model_config, *, eval_fraction=None,
                       seed: int = 42, use_chat_template: bool = True, column_map: dict | None = None,
                       system_prompt: str | None = None) -> PreparedData:
    """Load, split and check `dataset_name` for a preference or reward stage (`data.preference`):
    the rows come back as TRL's trainer reads them (TRL tokenizes them itself), rendered by the
    chat format decided here, as for SFT."""
    import datasets

    from .preference import check_stage_rows, stage_format, to_trl_rows

    data = load_source(dataset_name)
    if column_map:
        data = data.rename_columns(column_map)
    split = split_for_training(data, eval_fraction, seed)
    kind = stage_format(stage, split.train.column_names)
    rows = split.train.to_list()
    if not rows:
        raise DatasetError("The dataset is empty; add examples.")
    check_stage_rows(rows, stage, kind)
    sample = rows[0].get("prompt") if kind == "prompt_only" else rows[0].get("chosen", rows[0].get("completion"))
    conversational = isinstance(sample, list)
    chat_format = decide_chat_format(tokenizer, model_config, data_format="messages" if conversational else None,
                                     use_chat_template=use_chat_template, system_prompt=system_prompt)

    def shaped(part):
        return datasets.Dataset.from_list(to_trl_rows(part.to_list(), stage, kind, chat_format, seed))

    train = shaped(split.train)
    held = None
    if split.eval is not None and split.kind != "training_rows":
        check_stage_rows(split.eval.to_list(), stage, kind)
        held = split.eval
    stats = {"train": {"format": kind, "examples": len(split.train), "rows": len(train)}, "split": split.kind}
    return PreparedData(dataset_name, split, train, shaped(held) if held is not None else
                        (train if split.kind == "training_rows" else None),
                        split.eval, chat_format, stats)
