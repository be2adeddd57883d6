"""Dataset sources: turn `dataset_name` into a train split and an optional eval split.

Accepted: a built-in name (`"dialogue"`, `"iso_dates"`), a local file (.json, .jsonl, .csv,
.parquet, .txt) or folder (a `save_to_disk` folder, or a folder of such files), a
`datasets.Dataset` / `DatasetDict`, a list of dicts, or a hub dataset name (read from the local
cache; nothing is downloaded when offline).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import DatasetError

BUILTIN_DIR = Path(__file__).parent / "builtin"
BUILTIN_DATASETS = {
    "dialogue": "Short multi-turn assistant dialogues (chat `messages`), written for this project.",
    "iso_dates": "Rewrite a date such as 'March 5, 2021' as ISO 8601 '2021-03-05' (prompt/completion).",
    "facts": "24 made-up facts; validation asks them in reworded questions (prompt/completion).",
    "extract_fields": "Strict format: a sentence to 'name=Ana;age=34;city=Lisbon' (prompt/completion).",
    "snake_case": "Text transformation: 'LEMON Cloud north' to 'lemon_cloud_north' (prompt/completion).",
}
_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
_EVAL_SPLITS = ("validation", "valid", "val", "dev", "eval")


def _looks_like_path(text: str) -> bool:
    """A name that can only mean a local path (so it is not tried as a hub dataset)."""
    return text.startswith((".", "/", "~")) or Path(text).suffix.lower() in _BUILDERS


def builtin_files(name: str) -> dict[str, str]:
    files = {split: str(BUILTIN_DIR / f"{name}.{split}.jsonl") for split in ("train", "validation")}
    return {split: f for split, f in files.items() if Path(f).is_file()}


def load_source(source):
    """Load `source` into a `Dataset` or `DatasetDict` (no splitting yet)."""
    import datasets

    if isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
        return source
    if isinstance(source, list):
        if not source or not all(isinstance(row, dict) for row in source):
            raise DatasetError("A list dataset must be a non-empty list of dicts, e.g. [{'text': '...'}].")
        try:
            return datasets.Dataset.from_list(source)
        except Exception as exc:  # pyarrow type clashes between rows
            raise DatasetError(f"Could not build a dataset from the list of dicts: {exc}") from exc
    if not isinstance(source, (str, os.PathLike)):
        raise DatasetError(
            f"dataset_name={source!r} (a {type(source).__name__}) is not a dataset; pass a built-in "
            f"name {sorted(BUILTIN_DATASETS)}, a file or folder path, a hub dataset name, a "
            "datasets.Dataset or a list of dicts."
        )
    text = os.fspath(source)
    if text in BUILTIN_DATASETS:
        return datasets.DatasetDict({split: _load_json(f) for split, f in builtin_files(text).items()})
    path = Path(text).expanduser()
    if path.is_file():
        builder = _BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise DatasetError(
                f"dataset_name={text!r}: unsupported file type {path.suffix!r}; use one of "
                f"{sorted(_BUILDERS)} or a save_to_disk folder."
            )
        if builder == "json":
            return _load_json(path)
        return _load_files(builder, {"train": str(path)}, text)
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            try:
                return datasets.load_from_disk(str(path))
            except Exception as exc:
                raise DatasetError(f"Could not read the saved dataset folder {text!r}: {exc}") from exc
        return _load_hub_or_folder(text, folder=True)
    if _looks_like_path(text):
        raise DatasetError(
            f"dataset_name={text!r}: no such file or folder. Built-in datasets: {sorted(BUILTIN_DATASETS)}."
        )
    return _load_hub_or_folder(text, folder=False)


def _json_rows(path: str):
    """Rows of a JSON Lines file or a JSON array of objects.

    Read with the json module rather than datasets' pyarrow JSON reader, which turns strings such
    as "2021-03-05" into timestamps: a completion must stay exactly the text in the file.
    """
    with open(path, encoding="utf-8") as fh:
        head = fh.read(1)
        while head and head.isspace():
            head = fh.read(1)
        fh.seek(0)
        if head == "[":
            rows = json.load(fh)
            yield from rows
            return
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{path}, line {n}: not valid JSON ({exc}). Each line of a "
                                       ".jsonl file must be one JSON object.") from exc


def _load_json(path) -> "datasets.Dataset":
    import datasets

    path = Path(path)
    try:
        rows = list(_json_rows(str(path)))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"Could not read {str(path)!r} as JSON: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"Could not read {str(path)!r}: {exc}") from exc
    if not rows:
        raise DatasetError(f"{str(path)!r} holds no rows; add examples.")
    if not all(isinstance(row, dict) for row in rows):
        raise DatasetError(f"{str(path)!r}: every row must be a JSON object such as "
                           '{"prompt": "...", "completion": "..."}.')
    try:
        return datasets.Dataset.from_list(rows)
    except Exception as exc:  # pyarrow type clashes between rows
        raise DatasetError(f"Could not build a dataset from {str(path)!r}: {exc}") from exc


def _load_files(builder: str, files: dict[str, str], label: str):
    import datasets

    try:
        return datasets.load_dataset(builder, data_files=files)
    except Exception as exc:  # malformed JSON/CSV surfaces as several exception types
        raise DatasetError(f"Could not read dataset {label!r} as {builder}: {exc}") from exc


def _cached_hub_snapshot(repo_id: str) -> str | None:
    """The local folder of a hub dataset repo already in the HF cache (e.g. fetched earlier with
    `hf download --repo-type dataset`), or None."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, repo_type="dataset", local_files_only=True)
    except Exception:  # not cached, or not a valid repo id
        return None


def _load_hub_or_folder(text: str, folder: bool):
    import datasets

    try:
        return datasets.load_dataset(text)
    except Exception as exc:
        snapshot = None if folder else _cached_hub_snapshot(text)
        if snapshot is not None:  # datasets' offline mode only knows its own cache
            return _load_hub_or_folder(snapshot, folder=True)
        if folder:
            raise DatasetError(
                f"dataset_name={text!r}: could not read this folder as a dataset ({exc}). It should "
                f"hold {sorted(_BUILDERS)} files or be written by Dataset.save_to_disk."
            ) from exc
        raise DatasetError(
            f"dataset_name={text!r} is not a built-in dataset {sorted(BUILTIN_DATASETS)}, a local "
            "file or folder, nor a hub dataset in the local Hugging Face cache (nothing is "
            f"downloaded offline). Fix the name, or pass a local file. (datasets said: {exc})"
        ) from exc


def split_dataset(data, eval_fraction: float | None = None, seed: int = 42):
    """(train, eval or None): the dataset's own validation split when it has one, else an
    `eval_fraction` of the training rows when asked for."""
    import datasets

    eval_set = None
    if isinstance(data, datasets.DatasetDict):
        names = list(data)
        train_name = "train" if "train" in data else names[0]
        if train_name != "train" and len(names) > 1:
            raise DatasetError(f"The dataset has splits {names} but no 'train' split; name one 'train'.")
        train = data[train_name]
        eval_name = next((n for n in _EVAL_SPLITS if n in data), None)
        if eval_name is not None:
            eval_set = data[eval_name]
    else:
        train = data
    if len(train) == 0:
        raise DatasetError("The dataset is empty (its training split has no rows); add examples.")
    if eval_set is None and eval_fraction:
        if not 0 < eval_fraction < 1:
            raise DatasetError(f"eval_fraction={eval_fraction!r} must be between 0 and 1, e.g. 0.1.")
        if len(train) < 2:
            raise DatasetError("eval_fraction needs at least 2 rows to split; add examples.")
        parts = train.train_test_split(test_size=eval_fraction, seed=seed)
        train, eval_set = parts["train"], parts["test"]
    return train, eval_set


def check_source(source) -> str | None:
    """A cheap up-front check of `dataset_name` (no loading): the problem, or None."""
    import datasets

    if source is None or isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
        return None
    if isinstance(source, list):
        return None if source else "is an empty list; give at least one example dict."
    if not isinstance(source, (str, os.PathLike)):
        return (f"must be a dataset name, a path, a datasets.Dataset or a list of dicts, not a "
                f"{type(source).__name__}.")
    text = os.fspath(source)
    if text in BUILTIN_DATASETS or Path(text).expanduser().exists():
        return None
    if _looks_like_path(text):
        return f"no such file or folder. Built-in datasets: {sorted(BUILTIN_DATASETS)}."
    return None  # maybe a hub dataset: checked when loaded
