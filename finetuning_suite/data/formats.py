"""Dataset formats, detected from the columns, and their canonical form.

Every row becomes one of three canonical shapes before tokenization:
- `{"text": ...}`: plain text, every token trained;
- `{"prompt": ..., "completion": ...}`: loss on the completion only (by default);
- `{"messages": [{"role", "content"}, ...]}`: loss on the assistant turns only (by default).
"""
from __future__ import annotations

from ..errors import DatasetError

ROLES = ("system", "user", "assistant", "tool")
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system", "tool": "tool"}

# format name -> the columns that identify it (first match wins, in this order)
FORMATS = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "input_output": ("input", "output"),
    "source_target": ("source", "target"),
    "question_answer": ("question", "answer"),
    "text": ("text",),
}
_PAIR_FORMATS = {"prompt_completion", "input_output", "source_target", "question_answer"}

# For a base (non-chat) model, alpaca rows are rendered with the usual Alpaca prompt.
ALPACA_PROMPT = "### Instruction:\n{instruction}\n\n### Response:\n"
ALPACA_PROMPT_WITH_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"


def _describe_formats() -> str:
    return "; ".join(f"{name}: {' + '.join(cols)}" for name, cols in FORMATS.items())


def detect_format(columns, requested: str = "auto") -> str:
    columns = list(columns)
    if requested != "auto":
        if requested not in FORMATS:
            raise DatasetError(f"format={requested!r} is not a known format; use 'auto' or one of {list(FORMATS)}.")
        missing = [c for c in FORMATS[requested] if c not in columns]
        if missing:
            raise DatasetError(
                f"format={requested!r} needs columns {list(FORMATS[requested])}, but {missing} "
                f"are missing; the dataset has {columns}. Rename columns with column_map={{...}}."
            )
        return requested
    for name, needed in FORMATS.items():
        if all(c in columns for c in needed):
            return name
    raise DatasetError(
        f"The dataset's columns {columns} fit no known format. Formats and their columns: "
        f"{_describe_formats()}. Rename the columns with column_map, e.g. "
        f"FineTuner(..., column_map={_example_column_map(columns)}) (or "
        "DefaultPreprocessor(column_map=...)), or pass your own Preprocessor."
    )


def _example_column_map(columns: list) -> dict:
    """A column_map the user can start from: the first two columns as prompt and completion
    (one column: as text)."""
    if len(columns) >= 2:
        return {columns[0]: "prompt", columns[1]: "completion"}
    return {columns[0]: "text"} if columns else {"old": "new"}


def row_format(row: dict) -> str | None:
    """The format one row fits by its own keys, or None. A format whose columns are all null in
    the row does not count (tables written from mixed rows pad the other format's columns with
    nulls)."""
    for name, needed in FORMATS.items():
        if all(c in row for c in needed) and any(row[c] is not None for c in needed):
            return name
    return None


def check_rows(rows, source: str | None = None) -> None:
    """Refuse rows that the dataset cannot hold faithfully: rows of different formats (a table
    keeps the first row's columns, so the others would become empty examples) and null values in
    a format's columns (they would silently become empty text).

    rows: (where, row) pairs in order, `where` naming the row for the user ("line 3"); `source`
    (a file path) is put before it in messages. Rows whose columns fit no format are left to
    `detect_format` (and `column_map`)."""
    rows = list(rows)
    at = f"{source}, " if source else ""
    first = next(((where, row_format(row)) for where, row in rows if row_format(row)), None)
    if first is None:
        return
    first_where, fmt = first
    needed = FORMATS[fmt]
    for where, row in rows:
        other = row_format(row)
        if other is not None and other != fmt:
            raise DatasetError(
                f"{at}{where}: mixed data formats: {first_where} is {fmt} ({' + '.join(needed)}) but "
                f"{where} is {other} ({' + '.join(FORMATS[other])}). Every row must use one "
                "format: convert the rows to one format, or put each format in its own file."
            )
        missing = [c for c in needed if c not in row]
        if missing:
            raise DatasetError(
                f"{at}{where}: has columns {list(row)} and lacks {missing}, but {first_where} is {fmt} "
                f"({' + '.join(needed)}). Every row must use one format: add {missing} to this "
                "row, or remove it."
            )
        nulls = [c for c in needed if row[c] is None]
        if nulls:
            raise DatasetError(
                f"{at}{where}: {' and '.join(repr(c) for c in nulls)} is null. Give it text (\"\" if it is "
                "meant to be empty), or remove the row."
            )


def _text(row: dict, column: str, index: int, required: bool = True) -> str:
    value = row.get(column)
    if value is None:
        if required:  # null must not silently become "" (an empty prompt or answer)
            raise DatasetError(f"Row {index}: column {column!r} is null. Give it text (\"\" if it "
                               "is meant to be empty), or remove the row.")
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise DatasetError(f"Row {index}: column {column!r} should hold text, got {type(value).__name__} {value!r}.")
    return value


def _messages(row: dict, fmt: str, index: int) -> list[dict]:
    raw = row["messages"] if fmt == "messages" else row["conversations"]
    if not isinstance(raw, list) or not raw:
        raise DatasetError(f"Row {index}: {'messages' if fmt == 'messages' else 'conversations'} "
                           f"must be a non-empty list of turns, got {raw!r}.")
    out = []
    for turn in raw:
        if not isinstance(turn, dict):
            raise DatasetError(f"Row {index}: each turn must be a dict, got {turn!r}.")
        if fmt == "messages":
            role, content = turn.get("role"), turn.get("content")
            if role not in ROLES:
                raise DatasetError(f"Row {index}: unknown role {role!r}; roles must be one of {list(ROLES)}.")
        else:
            role, content = _SHAREGPT_ROLES.get(turn.get("from")), turn.get("value")
            if role is None:
                raise DatasetError(f"Row {index}: unknown speaker {turn.get('from')!r}; use one of "
                                   f"{list(_SHAREGPT_ROLES)}.")
        if not isinstance(content, str):
            raise DatasetError(f"Row {index}: turn content must be text, got {content!r}.")
        out.append({"role": role, "content": content})
    return out


def canonical(row: dict, fmt: str, index: int, chat_model: bool) -> dict:
    """The canonical shape of one row (see module docstring)."""
    if fmt in ("messages", "sharegpt"):
        return {"messages": _messages(row, fmt, index)}
    if fmt == "text":
        return {"text": _text(row, "text", index)}
    if fmt == "alpaca":
        instruction, extra = _text(row, "instruction", index), _text(row, "input", index, required=False)
        if chat_model:
            prompt = f"{instruction}\n\n{extra}" if extra else instruction
        else:
            template = ALPACA_PROMPT_WITH_INPUT if extra else ALPACA_PROMPT
            prompt = template.format(instruction=instruction, input=extra)
        return {"prompt": prompt, "completion": _text(row, "output", index)}
    if fmt in _PAIR_FORMATS:
        first, second = FORMATS[fmt]
        return {"prompt": _text(row, first, index), "completion": _text(row, second, index)}
    raise DatasetError(f"format={fmt!r} is not a known format; use one of {list(FORMATS)}.")


def flatten_messages(messages: list[dict]) -> tuple[str, str]:
    """(source, target) for a seq2seq model: the turns before the last assistant turn, as
    'role: content' lines, and that assistant turn."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        return "", ""
    source = "\n".join(f"{m['role']}: {m['content']}" for m in messages[:last])
    return source, messages[last]["content"]
