"""Dataset sources: turn `dataset_name` into a train split and an optional eval split.

Accepted: a built-in name (`"dialogue"`, `"iso_dates"`), a local file (.json, .jsonl, .csv,
.parquet, .txt) or folder (a `save_to_disk` folder, or a folder of such files), a
`datasets.Dataset` / `DatasetDict`, a list of dicts, or a hub dataset name (read from the local
cache; nothing is downloaded when offline).

How a name is read, in this order (the first rule that applies decides):

1. a built-in name: the built-in dataset;
2. an existing local file or folder: that file or folder;
3. a name that can only be a path (it starts with `.`, `/` or `~`, ends in a data-file suffix
   such as `.jsonl`, or its first folder exists here, like `data/train` when `data/` does):
   "no such file or folder", with a did-you-mean among the files beside it;
4. a name without `/` close to a built-in one (`"dialog"`, `"ISO_dates"`): "did you mean
   'dialogue'?";
5. a hub dataset id, `owner/name` (`"tatsu-lab/alpaca"`): the only names sent to the Hugging
   Face hub (from the local cache when `HF_HUB_OFFLINE=1`);
6. anything else (`"my_data"`): an error listing the built-in names and the forms above.

So the hub is reached only when the user names a hub dataset as `owner/name` and nothing local
or built-in matches: a typo of a built-in name or of a local path never goes to the network.

JSON, JSON Lines and CSV files are read with Python's own `json` and `csv` modules (strict
quoting), not pyarrow/pandas, so that text stays exactly the text in the file ("2021-03-05",
"01", "NA" and "None" stay strings) and a bad line is reported by its number. Their rows are
checked by `formats.check_rows`: one format for every row, no null values.
"""
from __future__ import annotations

import csv
import difflib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import DatasetError
from .formats import check_rows

BUILTIN_DIR = Path(__file__).parent / "builtin"
BUILTIN_DATASETS = {
    "dialogue": "Short multi-turn assistant dialogues (chat `messages`), written for this project.",
    "iso_dates": "Rewrite a date such as 'March 5, 2021' as ISO 8601 '2021-03-05' (prompt/completion).",
    "facts": "24 made-up facts; validation asks them in reworded questions (prompt/completion).",
    "extract_fields": "Strict format: a sentence to 'name=Ana;age=34;city=Lisbon' (prompt/completion).",
    "snake_case": "Text transformation: 'LEMON Cloud north' to 'lemon_cloud_north' (prompt/completion).",
    "concise": "Preferences (stage dpo/orpo/kto): a word-or-two answer chosen over a long, chatty one.",
    "sums": "Prompts with answers (stage grpo): 'What is 7 plus 5? Answer with just the number.'",
}
_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
_EVAL_SPLITS = ("validation", "valid", "val", "dev", "eval")


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _looks_like_path(text: str) -> bool:
    """A name that can only mean a local path (so it is not tried as a hub dataset): rule 3 of
    the module docstring."""
    first = Path(text).parts[0] if Path(text).parts else ""
    return (text.startswith((".", "/", "~")) or Path(text).suffix.lower() in _BUILDERS
            or (len(Path(text).parts) > 1 and Path(first).is_dir()))


def _missing_path(text: str) -> str:
    """The problem with a path that does not exist, with a did-you-mean among its siblings."""
    path = Path(text).expanduser()
    parent = path.parent
    if not parent.is_dir():
        return f"no such file or folder: {str(parent)!r} does not exist either. Check the path."
    close = difflib.get_close_matches(path.name, [p.name for p in parent.iterdir()], n=1)
    hint = f" Did you mean {str(parent / close[0])!r}?" if close else " Check the path."
    return f"no such file or folder.{hint} Built-in datasets: {sorted(BUILTIN_DATASETS)}."


def _near_builtin(text: str) -> str | None:
    """The built-in name `text` is probably a typo of (rule 4 of the module docstring)."""
    if "/" in text:
        return None  # owner/name: a hub id, meant as one
    lowered = {name.lower(): name for name in BUILTIN_DATASETS}
    key = text.strip().lower().replace("-", "_").replace(" ", "_")
    close = difflib.get_close_matches(key, list(lowered), n=1, cutoff=0.75)
    return lowered[close[0]] if close else None


def _name_problem(text: str) -> str | None:
    """Why `text` (not a built-in name, not an existing path) cannot be loaded, or None when it
    is a hub dataset id (rules 3-6 of the module docstring)."""
    if _looks_like_path(text):
        return _missing_path(text)
    near = _near_builtin(text)
    if near is not None:
        return (f"is not a built-in dataset; did you mean {near!r}? Built-in datasets: "
                f"{sorted(BUILTIN_DATASETS)}.")
    if not _HUB_ID.fullmatch(text):
        return (f"is not a built-in dataset {sorted(BUILTIN_DATASETS)} nor an existing file or "
                "folder. Pass one of those, a path to a .jsonl/.json/.csv/.parquet/.txt file, or "
                "a hub dataset id as owner/name (e.g. 'tatsu-lab/alpaca').")
    return None


def builtin_files(name: str) -> dict[str, str]:
    files = {split: str(BUILTIN_DIR / f"{name}.{split}.jsonl") for split in ("train", "validation")}
    return {split: f for split, f in files.items() if Path(f).is_file()}


def load_source(source, name: str = "dataset_name"):
    """Load `source` into a `Dataset` or `DatasetDict` (no splitting yet). `name` is the
    argument it came from, as error messages call it (`evaluate(dataset=...)`: "dataset")."""
    import datasets

    if isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
        return source
    if isinstance(source, list):
        bad = next((i for i, row in enumerate(source) if not isinstance(row, dict)), None)
        if not source or bad is not None:
            what = f"{name}=[] is empty" if not source else \
                f"{name}[{bad}]={source[bad]!r} is not a dict"
            raise DatasetError(f"{what}: a list dataset must be a non-empty list of dicts, e.g. "
                               "[{'prompt': '...', 'completion': '...'}].")
        return _from_rows([(f"{name}[{i}]", row) for i, row in enumerate(source)])
    if not isinstance(source, (str, os.PathLike)):
        raise DatasetError(
            f"{name}={source!r} (a {type(source).__name__}) is not a dataset; pass a built-in "
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
                f"{name}={text!r}: unsupported file type {path.suffix!r}; use one of "
                f"{sorted(_BUILDERS)} or a save_to_disk folder."
            )
        if builder == "json":
            return _load_json(path)
        if builder == "csv":
            return _load_csv(path)
        return _load_files(builder, {"train": str(path)}, text)
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            try:
                return datasets.load_from_disk(str(path))
            except Exception as exc:
                raise DatasetError(f"Could not read the saved dataset folder {text!r}: {exc}") from exc
        return _load_hub_or_folder(text, folder=True, name=name)
    problem = _name_problem(text)
    if problem is not None:
        raise DatasetError(f"{name}={text!r}: {problem}")
    return _load_hub_or_folder(text, folder=False, name=name)


_JSON_HELP = ("A .json file holds one JSON array of objects ([{...}, {...}]); a .jsonl file one "
              "JSON object per line.")


def _json_rows(path: str):
    """(where, row) for each row of a JSON Lines file or a JSON array of objects; `where` names
    the line (JSON Lines) or the item (array) for error messages.

    Read with the json module rather than datasets' pyarrow JSON reader, which turns strings such
    as "2021-03-05" into timestamps: a completion must stay exactly the text in the file.
    """
    with open(path, encoding="utf-8-sig") as fh:
        head = fh.read(1)
        while head and head.isspace():
            head = fh.read(1)
        fh.seek(0)
        if head == "[":
            try:
                rows = json.load(fh)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg}, column "
                                   f"{exc.colno}). Fix that line. {_JSON_HELP}") from exc
            for i, row in enumerate(rows, 1):
                _check_unicode(row, f"{path}, item {i}")
                yield f"item {i}", row
            return
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{path}, line {n}: not valid JSON ({exc.msg}, column "
                                       f"{exc.colno}). Fix that line. {_JSON_HELP}") from exc
                _check_unicode(row, f"{path}, line {n}")
                yield f"line {n}", row


def _check_unicode(value, where: str) -> None:
    """JSON can spell a lone UTF-16 surrogate (`"\\ud83d"` without its pair), which is not text:
    refuse it here, naming the line, rather than as an encoder's error later."""
    if isinstance(value, str):
        bad = next((c for c in value if "\ud800" <= c <= "\udfff"), None)
        if bad is not None:
            raise DatasetError(f"{where}: holds the escape \\u{ord(bad):04x}, half of a UTF-16 surrogate "
                               "pair, which is not a character. Write the character itself (or its "
                               "full pair of escapes), or remove it.")
    elif isinstance(value, dict):
        for item in value.values():
            _check_unicode(item, where)
    elif isinstance(value, list):
        for item in value:
            _check_unicode(item, where)


def _kind(value) -> str | None:
    """A JSON value's kind as a table column holds it (None: null, which any column allows)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    return "a list" if isinstance(value, list) else "an object" if isinstance(value, dict) else type(value).__name__


def _one_kind_per_column(rows, source: str | None) -> list:
    """The rows with every column holding one kind of value (a table column has one type, and
    pyarrow's own error names neither the row nor the column). Numbers in a column of text are
    read as their text ("How many moons?" -> 7 is the answer "7"); any other mix is refused,
    naming both rows."""
    first: dict[str, tuple[str, str]] = {}
    mixed: set[str] = set()
    at = f"{source}, " if source else ""
    for where, row in rows:
        for column, value in row.items():
            kind = _kind(value)
            if kind is None:
                continue
            seen = first.setdefault(column, (kind, where))
            if seen[0] == kind:
                continue
            if {seen[0], kind} == {"a number", "text"}:
                mixed.add(column)
                continue
            raise DatasetError(
                f"{at}{where}: column {column!r} holds {kind} ({value!r:.60}), but in "
                f"{seen[1]} it holds {seen[0]}. A column must hold one kind of value in every "
                "row: fix this row (or that one).")
    if not mixed:
        return rows
    return [(where, {c: (str(v) if c in mixed and _kind(v) == "a number" else v) for c, v in row.items()})
            for where, row in rows]


def _load_json(path) -> "datasets.Dataset":
    path = Path(path)
    try:
        rows = list(_json_rows(str(path)))
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"Could not read {str(path)!r}: {exc}") from exc
    if not rows:
        raise DatasetError(f"{str(path)!r} holds no rows; add examples.")
    for where, row in rows:
        if not isinstance(row, dict):
            raise DatasetError(f"{path}, {where}: {row!r} is not a JSON object; every row must be "
                               'one, such as {"prompt": "...", "completion": "..."}.')
    return _from_rows(rows, str(path))


def _load_csv(path: Path) -> "datasets.Dataset":
    """Rows of a CSV file with a header line, every value kept as the text in the file.

    Python's csv module in strict mode, not pandas: pandas reads an unclosed quote as one long
    value that swallows the following lines (several rows become one) and turns "NA", "None" or
    "01" into nulls and numbers. A quoting error or a line with the wrong number of values is
    refused with its line number."""
    fix = ('Quote values that contain commas or line breaks ("a, b"), double a quote inside a '
           'quoted value (""), and close every quote.')
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh, strict=True)
            records, header = [], None
            while True:
                start = reader.line_num + 1  # a quoted value may run over several lines
                try:
                    fields = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:
                    end = f" (the value opened there runs to line {reader.line_num})" \
                        if reader.line_num > start else ""
                    raise DatasetError(f"{path}, line {start}: not valid CSV: {exc}{end}. {fix}") from exc
                if not fields:
                    continue  # blank line
                if header is None:
                    header = fields
                elif len(fields) != len(header):
                    raise DatasetError(f"{path}, line {start}: {len(fields)} values, but the header "
                                       f"has {len(header)} ({header}). {fix}")
                else:
                    records.append((f"line {start}", dict(zip(header, fields))))
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"Could not read {str(path)!r}: {exc}") from exc
    if header is None or not records:
        what = "is empty" if header is None else f"has a header {header} but no rows"
        raise DatasetError(f"{str(path)!r} {what}; add examples, one per line under a header such "
                           "as prompt,completion.")
    if len(set(header)) != len(header) or not all(h.strip() for h in header):
        raise DatasetError(f"{path}, line 1: the header {header} has an empty or repeated column "
                           "name; give every column its own name.")
    return _from_rows(records, str(path))


def _from_rows(rows: list, path: str | None = None) -> "datasets.Dataset":
    """A Dataset from (where, row) pairs of the file `path` (None: a list of dicts), after
    `formats.check_rows` (one format, no nulls). `Dataset.from_list` keeps only the first row's
    columns, which is why the check matters."""
    import datasets

    check_rows(rows, path)
    rows = _one_kind_per_column(rows, path)
    try:
        return datasets.Dataset.from_list([row for _, row in rows])
    except Exception as exc:  # pyarrow type clashes between rows
        label = repr(path) if path else "the list of dicts"
        raise DatasetError(f"Could not build a dataset from {label}: {exc}. Give each column "
                           "values of one type (text, or lists of turns) in every row.") from exc


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


def _load_hub_or_folder(text: str, folder: bool, name: str = "dataset_name"):
    import datasets

    try:
        return datasets.load_dataset(text)
    except Exception as exc:
        snapshot = None if folder else _cached_hub_snapshot(text)
        if snapshot is not None:  # datasets' offline mode only knows its own cache
            return _load_hub_or_folder(snapshot, folder=True, name=name)
        if folder:
            raise DatasetError(
                f"{name}={text!r}: could not read this folder as a dataset ({exc}). It should "
                f"hold {sorted(_BUILDERS)} files or be written by Dataset.save_to_disk."
            ) from exc
        raise DatasetError(
            f"{name}={text!r} is not a built-in dataset {sorted(BUILTIN_DATASETS)}, a local "
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


# eval_fraction left empty: hold out this share of the rows from AUTO_EVAL_MIN_ROWS rows on (at
# most AUTO_EVAL_MAX rows); a smaller set is too precious to split, so it is evaluated on its
# training rows, and the results say so.
AUTO_EVAL_FRACTION = 0.1
AUTO_EVAL_MIN_ROWS = 20
AUTO_EVAL_MAX = 200


@dataclass(frozen=True)
class Split:
    """A dataset split for a run. `eval` is the rows evaluation uses: the dataset's own
    validation split (`kind="validation"`), rows held out (`"held_out"`), the training rows
    themselves for a small set with no split asked for (`"training_rows"`), or None when
    `eval_fraction=0` (`"none"`). `note` says which, for logs and results."""

    train: object
    eval: object | None
    kind: str
    note: str

    @property
    def held_out(self):
        """The eval rows when they are not training rows (what the Trainer may evaluate)."""
        return self.eval if self.kind in ("validation", "held_out") else None


def split_for_training(data, eval_fraction: float | None = None, seed: int = 42) -> Split:
    """The run's split of `data` (a Dataset or DatasetDict): the dataset's validation split when
    it has one; else `eval_fraction` of the rows (0: none); left empty, the rule above."""
    train, own = split_dataset(data)
    if own is not None:
        return Split(train, own, "validation", f"the dataset's validation split ({len(own)} rows)")
    if eval_fraction == 0:
        return Split(train, None, "none", "no evaluation split (eval_fraction=0)")
    if eval_fraction is None:
        if len(train) < AUTO_EVAL_MIN_ROWS:
            return Split(train, train, "training_rows",
                         f"the {len(train)} training rows themselves: the set is too small to hold "
                         f"rows out (fewer than {AUTO_EVAL_MIN_ROWS}); pass eval_fraction or a "
                         "validation file to measure on unseen rows")
        eval_fraction = min(AUTO_EVAL_FRACTION, AUTO_EVAL_MAX / len(train))
    train, held = split_dataset(train, eval_fraction, seed)
    return Split(train, held, "held_out", f"{len(held)} rows held out of {len(train) + len(held)} "
                 f"(eval_fraction={eval_fraction:.3g}, seed {seed}); not trained on")


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
    return _name_problem(text)  # None: a hub dataset id, checked when loaded
