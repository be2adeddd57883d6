"""Data for preference and reward training: detected, checked and shaped like the SFT data.

Three kinds of rows, one per stage (`config`'s `stage`):

- preference (`dpo`, `orpo`; `kto` too, unpaired here): `prompt` + `chosen` + `rejected`, each a
  string, or conversations (lists of role/content messages); a conversation's prompt may be
  left implicit: the messages chosen and rejected share before their last assistant turn;
- unpaired (`kto`): `prompt` + `completion` + `label` (true: a desirable answer);
- prompt-only (`grpo`): `prompt`, and any other columns, which reach the reward functions.

`check_stage_rows` refuses what would train wrongly, naming the row and the fix (a missing or
empty field, chosen equal to rejected, one row a string and another a conversation, a label
that is not true/false). `to_trl_rows` turns rows into what TRL's trainers read, rendered by the
run's chat format (`chat_template.ChatFormat`, the same decision SFT and generation follow): on
a chat model every row becomes a conversation (the system prompt first, when one is set), which
TRL renders with the run's template (handed a tokenizer copy carrying it); elsewhere plain text,
to which TRL appends EOS. Either way each answer ends with the EOS the model stops on.
"""
from __future__ import annotations

import random

from ..errors import DatasetError
from .chat_template import ChatFormat

STAGE_COLUMNS = {"dpo": ("chosen", "rejected"), "orpo": ("chosen", "rejected"),
                 "kto": ("prompt", "completion", "label"), "grpo": ("prompt",)}
_HOW = {
    "dpo": "rows of prompt + chosen + rejected (strings or conversations), e.g. "
           '{"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "There are many colours..."}',
    "kto": "rows of prompt + completion + label (true for a desirable answer), or preference rows "
           "(prompt + chosen + rejected), which are split into one desirable and one undesirable row",
    "grpo": "rows with a prompt (a string or a conversation); other columns are passed to the reward "
            'functions, e.g. {"prompt": "What is 2 + 3?", "answer": "5"}',
}
_HOW["orpo"] = _HOW["dpo"]


def stage_format(stage: str, columns) -> str:
    """The row kind `stage` reads from `columns` ("preference", "unpaired" or "prompt_only")."""
    columns = set(columns)
    if stage in ("dpo", "orpo") or (stage == "kto" and {"chosen", "rejected"} <= columns):
        if not {"chosen", "rejected"} <= columns:
            raise DatasetError(f"stage={stage!r} needs {_HOW[stage]}; the dataset has columns "
                               f"{sorted(columns)}. Rename them with column_map.")
        return "preference"
    if stage == "kto":
        if not {"prompt", "completion", "label"} <= columns:
            raise DatasetError(f"stage='kto' needs {_HOW['kto']}; the dataset has columns "
                               f"{sorted(columns)}. Rename them with column_map.")
        return "unpaired"
    if "prompt" not in columns:
        raise DatasetError(f"stage={stage!r} needs {_HOW[stage]}; the dataset has columns "
                           f"{sorted(columns)}. Rename the prompt column with column_map.")
    return "prompt_only"


def _is_conversation(value) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) for m in value)


def _blank(value) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if _is_conversation(value):
        return not value or not any(str(m.get("content", "")).strip() for m in value)
    return False


def _implicit_prompt(chosen: list, rejected: list) -> tuple[list, list, list]:
    """(prompt, chosen answer turns, rejected answer turns) of two conversations that share
    every message before their last assistant turn."""
    def split(conversation):
        last = max((i for i, m in enumerate(conversation) if m.get("role") == "assistant"), default=None)
        return (conversation, []) if last is None else (conversation[:last], conversation[last:])

    (p_c, a_c), (p_r, a_r) = split(chosen), split(rejected)
    return (p_c, a_c, a_r) if p_c == p_r else ([], [], [])


def check_stage_rows(rows, stage: str, kind: str) -> None:
    """Refuse rows that cannot train `stage` faithfully (see the module docstring)."""
    shape = None
    for index, row in enumerate(rows):
        at = f"row {index + 1}"
        if kind == "preference":
            for name in ("chosen", "rejected"):
                if _blank(row.get(name)):
                    raise DatasetError(f"{at}: {name!r} is missing or empty; every row needs a chosen "
                                       "and a rejected answer. Fill it in, or remove the row.")
            if row["chosen"] == row["rejected"]:
                raise DatasetError(f"{at}: chosen and rejected are the same ({row['chosen']!r:.80}), so "
                                   "there is no preference to learn. Give a different rejected answer, "
                                   "or remove the row.")
            prompt = row.get("prompt")
            conv = _is_conversation(row["chosen"])
            if conv != _is_conversation(row["rejected"]) or (prompt is not None and not _blank(prompt)
                                                              and _is_conversation(prompt) != conv):
                raise DatasetError(f"{at}: mixes a string and a conversation among prompt, chosen and "
                                   "rejected. Give all three as strings, or all as lists of messages.")
            if prompt is None or _blank(prompt):
                if not conv or not _implicit_prompt(row["chosen"], row["rejected"])[0]:
                    raise DatasetError(f"{at}: the prompt is missing or empty. Give a 'prompt', or (for "
                                       "conversations) let chosen and rejected share the user turns "
                                       "before their last assistant turn.")
            row_shape = "conversation" if conv else "string"
        elif kind == "unpaired":
            for name in ("prompt", "completion"):
                if _blank(row.get(name)):
                    raise DatasetError(f"{at}: {name!r} is missing or empty. Fill it in, or remove the row.")
            if not isinstance(row.get("label"), bool):
                raise DatasetError(f"{at}: label={row.get('label')!r} must be true (a desirable answer) "
                                   "or false (an undesirable one).")
            row_shape = "conversation" if _is_conversation(row["completion"]) else "string"
        else:
            if _blank(row.get("prompt")):
                raise DatasetError(f"{at}: the prompt is missing or empty. Fill it in, or remove the row.")
            row_shape = "conversation" if _is_conversation(row["prompt"]) else "string"
        if shape is None:
            shape = row_shape
        elif row_shape != shape:
            raise DatasetError(f"{at}: is a {row_shape} where row 1 is a {shape}: mixed formats. Give every "
                               "row in one form (all strings, or all conversations).")


def _messages(value, role: str) -> list[dict]:
    return list(value) if _is_conversation(value) else [{"role": role, "content": value}]


def _text(value) -> str:
    if _is_conversation(value):
        return "\n".join(m["content"] for m in value)
    return value


def to_trl_rows(rows, stage: str, kind: str, chat_format: ChatFormat, seed: int = 42) -> list[dict]:
    """Rows as TRL's trainer for `stage` reads them (see the module docstring). Preference rows
    for KTO are split into a desirable and an undesirable row each; KTO's rows are shuffled
    (`seed`), so that its in-order batches hold both kinds."""
    chat = chat_format.chat and chat_format.wrap_text
    system = [{"role": "system", "content": chat_format.system_prompt}] if chat_format.system_prompt else []
    out = []
    for row in rows:
        if kind == "prompt_only":
            prompt = row["prompt"]
            shaped = {**row, "prompt": system + _messages(prompt, "user") if chat else _text(prompt)}
            out.append(shaped)
            continue
        prompt = row.get("prompt")
        answers = {name: row[name] for name in ("chosen", "rejected", "completion") if name in row}
        if _blank(prompt):  # an implicit prompt: the shared turns of two conversations
            prompt, answers["chosen"], answers["rejected"] = _implicit_prompt(row["chosen"], row["rejected"])
        if chat:
            shaped = {"prompt": system + _messages(prompt, "user"),
                      **{k: _messages(v, "assistant") for k, v in answers.items()}}
        else:
            shaped = {"prompt": _text(prompt), **{k: _text(v) for k, v in answers.items()}}
        if "label" in row:
            shaped["label"] = row["label"]
        if stage == "kto" and kind == "preference":
            out.append({"prompt": shaped["prompt"], "completion": shaped["chosen"], "label": True})
            out.append({"prompt": shaped["prompt"], "completion": shaped["rejected"], "label": False})
        else:
            out.append(shaped)
    if stage == "kto":  # KTO reads its rows in order (its KL term pairs neighbours): mix them once
        random.Random(seed).shuffle(out)
    return out
