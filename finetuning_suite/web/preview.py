"""The first rows of a dataset as the model will see them in training.

Each row goes through what training uses: the dataset is read by `data.sources.load_source`
and split as training splits it (`split_for_training`, with the run's seed), the chat format is
the one training decides (`data.prepare.data_chat_format`, handed to the preprocessor; the
shared tokenizer is not changed), and `DefaultPreprocessor` (built from the same configuration
fields) turns the rows into token ids and labels. The ids are decoded back into text in runs of tokens that do or
do not carry loss (label != -100), so the page can show the exact prompt text (chat template,
special tokens) with the trained part highlighted. Only the tokenizer and the model's config
are loaded, never its weights.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

from ..config import FinetuneConfig
from ..data.prepare import data_chat_format
from ..data.preprocessing import IGNORE_INDEX, DefaultPreprocessor
from ..data.sources import load_source, split_for_training
from ..errors import ConfigError
from ..model.loading import load_config, load_tokenizer, resolve_model_source

PREVIEW_ROWS = 3


@dataclass
class PreviewRow:
    segments: list[tuple[str, bool]]  # (text, carries loss), in order
    tokens: int
    trained_tokens: int


@dataclass
class Preview:
    rows: list[PreviewRow]
    total_rows: int  # rows in the training split
    eval_rows: int | None  # rows held out for evaluation (None: no rows held out)
    format: str
    stats: dict = field(default_factory=dict)  # the preprocessor's, for the rows shown
    source: str = ""
    eval_note: str = ""  # which rows evaluation uses (`sources.Split.note`)


class TokenizerCache:
    """Tokenizer and model config per (model_id, adapter_path), loaded once."""

    def __init__(self):
        self._lock = threading.Lock()
        self._items: dict[tuple, tuple] = {}

    def get(self, model_id, adapter_path=None, trust_remote_code: bool = False):
        key = (model_id, adapter_path, trust_remote_code)
        with self._lock:
            if key not in self._items:
                src = resolve_model_source(model_id, adapter_path)
                tokenizer = load_tokenizer(src, trust_remote_code)
                model_config = load_config(src, trust_remote_code)
                self._items[key] = (src, tokenizer, model_config)
                if len(self._items) > 4:
                    self._items.pop(next(iter(self._items)))
            return self._items[key]


_TOKENIZERS = TokenizerCache()


def preview(config: FinetuneConfig, rows: int = PREVIEW_ROWS, cache: TokenizerCache | None = None) -> Preview:
    """The first `rows` training rows of `config`'s dataset, tokenized as training will.
    Raises the package's errors (DatasetError, ModelLoadError, ConfigError) on bad input."""
    data_cfg = config.data
    if data_cfg.dataset_name is None:
        raise ConfigError("dataset_name is empty: upload a file (.jsonl, .json, .csv, .parquet, "
                          ".txt) or give a path or a built-in name (dialogue, iso_dates, ...).")
    # the same split training makes (the dataset's validation split, or rows held out, seeded)
    split = split_for_training(load_source(data_cfg.dataset_name), data_cfg.eval_fraction,
                               config.training.seed)
    train = split.train
    cache = cache or _TOKENIZERS
    src, tokenizer, model_config = cache.get(
        config.model.model_id, config.model.adapter_path, config.model.trust_remote_code)
    preprocessor = DefaultPreprocessor(
        format=data_cfg.format, column_map=data_cfg.column_map,
        max_seq_length=data_cfg.max_seq_length, train_on_inputs=data_cfg.train_on_inputs,
        use_chat_template=data_cfg.use_chat_template)
    subset = train.select(range(min(rows, len(train))))
    chat_format = data_chat_format(preprocessor, subset, tokenizer, model_config,
                                   use_chat_template=data_cfg.use_chat_template,
                                   system_prompt=config.generation.system_prompt)
    tokenized = preprocessor(subset, tokenizer, model_config, chat_format=chat_format)
    shown = [_segments(tokenizer, ids, labels)
             for ids, labels in zip(tokenized["input_ids"], tokenized["labels"])]
    held = split.held_out
    return Preview(rows=shown, total_rows=len(train), eval_rows=len(held) if held is not None else None,
                   eval_note=split.note, format=preprocessor.stats.get("format", "?"),
                   stats=dict(preprocessor.stats), source=src.source)


def check_model_settings(config: FinetuneConfig, cache: TokenizerCache | None = None) -> None:
    """What `FineTuner` checks against the model, checked against its config (no weights): the
    LoRA layer names and the rank. Raises the same ConfigError `FineTuner` would."""
    m = config.method
    if m.method == "full" or config.model.adapter_path:
        return
    from ..model.lora import check_against_config
    from ..train import defaults as auto_defaults

    src, _, model_config = (cache or _TOKENIZERS).get(
        config.model.model_id, config.model.adapter_path, config.model.trust_remote_code)
    if src.adapter_path:  # a trained adapter keeps its own layers
        return
    targets = m.lora_target_modules if m.lora_target_modules is not None else auto_defaults.LORA_TARGETS
    check_against_config(model_config, targets, m.lora_r)


def _segments(tokenizer, ids: list[int], labels: list[int]) -> PreviewRow:
    """Runs of consecutive tokens with the same "carries loss" flag, decoded together (so a
    character split over several byte-level tokens decodes whole)."""
    segments: list[tuple[str, bool]] = []
    start = 0
    trained = [label != IGNORE_INDEX for label in labels]
    for i in range(1, len(ids) + 1):
        if i == len(ids) or trained[i] != trained[start]:
            text = tokenizer.decode(ids[start:i], skip_special_tokens=False,
                                    clean_up_tokenization_spaces=False)
            segments.append((text, trained[start]))
            start = i
    return PreviewRow(segments, len(ids), sum(trained))
