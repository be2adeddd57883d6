"""Automatic checkers for free-form answers, and the prompt-template rule that keeps benchmark
prompts apart from training prompts.

`check(reply, spec)` is True when the model's reply satisfies every key of `spec`:

- `"any": [str, ...]`: at least one string occurs in the reply (case-insensitive, at word
  boundaries: "4" does not match "14" or "4.5", "H2O" matches "H2O.").
- `"none": [str, ...]`: none of these occurs (same matching).
- `"regex": str`: `re.search(regex, reply, re.IGNORECASE)` finds a match.
- `"json_keys": [str, ...]`: the reply holds a JSON object (bare, inside a ``` fence, or amid
  text) that has all these keys.
- `"json_values": {key: [str, ...]}`: that object's value for `key`, lower-cased, contains one
  of the strings (the key must exist; it need not be repeated in `json_keys`).
- `"list_items": n`: at least n list lines ("1.", "2)", "-", "*", "•"), or failing that, n
  comma-separated items on one line ("red, green and blue" is 3).
- `"max_words": n`: at most n words once surrounding punctuation is stripped.
- `"uppercase": true`: at least 3 letters and every letter upper-case.

An unknown key raises ValueError naming it (a typo must not silently pass every reply).

`template_key(prompt)` reduces a prompt to its question template; `shares_template(a, b)` says
whether two prompts are instances of one template (see their docstrings).
"""
from __future__ import annotations

import json
import re

KNOWN_KEYS = ("any", "none", "regex", "json_keys", "json_values", "list_items", "max_words",
              "uppercase")


# -- checking a reply ---------------------------------------------------------------------
def _normalise(reply: str) -> str:
    # Curly quotes would make "don't" and "don’t" different strings.
    return reply.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')


def _occurs(term: str, reply: str) -> bool:
    """`term` occurs in `reply` as a whole word (or words), case-insensitive."""
    pattern = r"\s+".join(re.escape(part) for part in term.split())
    # Lookarounds instead of \b so terms that begin or end with a non-word character ("$5",
    # "3.5") still work. A number must also not be the start or end of a longer number:
    # "4" is not in "4.5" or "1,4".
    before = r"(?<!\w)" + (r"(?<!\d[.,])" if term[:1].isdigit() else "")
    after = r"(?!\w)" + (r"(?![.,]\d)" if term[-1:].isdigit() else "")
    return re.search(before + pattern + after, reply, re.IGNORECASE) is not None


def _json_objects(reply: str):
    """Every JSON object that can be decoded starting at some "{" of the reply, in order."""
    decoder = json.JSONDecoder()
    # Scanning every "{" covers fenced blocks (```json ... ```) and objects amid prose alike.
    for match in re.finditer(r"\{", reply):
        try:
            value, _ = decoder.raw_decode(reply, match.start())
        except ValueError:
            continue
        if isinstance(value, dict):
            yield value


def _json_ok(reply: str, keys: list, values: dict) -> bool:
    wanted = list(keys) + [k for k in values if k not in keys]
    for obj in _json_objects(reply):
        if not all(k in obj for k in wanted):
            continue
        if all(_value_matches(obj[k], options) for k, options in values.items()):
            return True
    return False


def _value_matches(value, options) -> bool:
    text = value if isinstance(value, str) else json.dumps(value)
    return any(str(o).lower() in text.lower() for o in options)


_LIST_LINE = re.compile(r"^\s*(?:\d+[.)]|[-*•–])\s+\S")


def _list_count(reply: str) -> int:
    lines = reply.splitlines()
    marked = sum(1 for line in lines if _LIST_LINE.match(line))
    if marked:
        return marked
    # No list lines: the longest one-line enumeration, where a final "and"/"or" also separates
    # ("red, green and blue" names three colours). The first item may carry a lead-in ("Two pets
    # are cats, dogs"); a later piece of more than 4 words means the commas join the clauses of
    # a sentence, not list items.
    best = 0
    for line in lines:
        items = [i for i in re.split(r",|;|\s+(?:and|or)\s+", line) if i.strip(" .!")]
        if len(items) >= 2 and all(len(i.split()) <= 4 for i in items[1:]):
            best = max(best, len(items))
    return best


def _word_count(reply: str) -> int:
    words = reply.strip().strip(".,;:!?\"'()[]*`").split()
    # A lone dash or bullet is not a word.
    return sum(1 for w in words if re.search(r"\w", w))


def _uppercase(reply: str) -> bool:
    letters = [c for c in reply if c.isalpha()]
    return len(letters) >= 3 and all(c.isupper() for c in letters)


def check(reply: str, spec: dict) -> bool:
    """Whether `reply` satisfies every key of the checker `spec` (schema: module docstring)."""
    for key in spec:
        if key not in KNOWN_KEYS:
            raise ValueError(f"unknown checker key {key!r} (known: {', '.join(KNOWN_KEYS)})")
    reply = _normalise(reply or "")
    if "any" in spec and not any(_occurs(t, reply) for t in spec["any"]):
        return False
    if "none" in spec and any(_occurs(t, reply) for t in spec["none"]):
        return False
    if "regex" in spec and not re.search(spec["regex"], reply, re.IGNORECASE):
        return False
    if ("json_keys" in spec or "json_values" in spec) and not _json_ok(
            reply, spec.get("json_keys", []), spec.get("json_values", {})):
        return False
    if "list_items" in spec and _list_count(reply) < spec["list_items"]:
        return False
    if "max_words" in spec and _word_count(reply) > spec["max_words"]:
        return False
    if spec.get("uppercase") and not _uppercase(reply):
        return False
    return True


# -- prompt templates ---------------------------------------------------------------------
_QUOTED = re.compile(r"""(?<!\w)'[^']*'(?!\w)|"[^"]*"|‘[^’]*’|“[^”]*”""")


def template_key(prompt: str) -> str:
    """The prompt with its slots blanked: quoted spans, numbers and capitalised words (names,
    places, languages) become "_"; then lower-cased, punctuation dropped, spaces collapsed.

    "Translate 'cat' into French." and "Translate 'thank you' into Spanish." both give
    "translate _ into _".
    """
    # A quote only opens after a non-word character, so the apostrophe of "What's" is not one.
    text = _QUOTED.sub(" _ ", prompt)
    words = text.split()
    # The first word is capitalised because it starts the sentence, not because it is a name.
    # Capitalised words go before numbers, so "H2O" is one slot, not "H", "2" and "O".
    words = words[:1] + ["_" if re.match(r"[^\w]*[A-Z]", w) else w for w in words[1:]]
    text = re.sub(r"\d+(?:[.,]\d+)*", " _ ", " ".join(words)).lower()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())


def shares_template(a: str, b: str) -> bool:
    """Whether two prompts share a template: equal keys, or keys whose first four words are equal.

    The four-word prefix catches rephrasings of one question form that differ only in their
    tail ("what is the capital of _" vs "what is the capital city of _").
    """
    ka, kb = template_key(a).split(), template_key(b).split()
    return ka == kb or ka[:4] == kb[:4]
