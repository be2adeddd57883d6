"""The retention benchmark (finetuning_suite/data/retention/) and its checkers.

Expected values are written by hand. Disjointness: no retention prompt shares a question
template with the replay pool, the self-replay prompts or the built-in training data, and dev
and test share none with each other.
"""
import glob
import json
import re
from pathlib import Path

import pytest

from finetuning_suite.data.replay import REPLAY_PROMPTS
from finetuning_suite.infer.checks import check, shares_template, template_key

DATA = Path(__file__).resolve().parent.parent / "finetuning_suite" / "data"
RETENTION = DATA / "retention"
KINDS = {"knowledge": "know", "arithmetic": "arith", "word": "word", "format": "fmt",
         "translation": "trans", "multi_turn": "multi", "everyday": "day"}
CHECK_KEYS = {"any", "none", "regex", "json_keys", "json_values", "list_items", "max_words", "uppercase"}


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


DEV = read_jsonl(RETENTION / "retention.dev.jsonl")
TEST = read_jsonl(RETENTION / "retention.test.jsonl")
POOL = read_jsonl(RETENTION / "replay_pool.jsonl")


def user_turns(item):
    return [m["content"] for m in item["messages"] if m["role"] == "user"]


# -- checkers -----------------------------------------------------------------------------
@pytest.mark.parametrize("reply, spec, expected", [
    # any: case-insensitive, whole words only
    ("The capital of Peru is Lima.", {"any": ["Lima"]}, True),
    ("lima", {"any": ["Lima"]}, True),
    ("Water is H2O.", {"any": ["H2O"]}, True),
    ("8 + 6 = 14", {"any": ["14", "fourteen"]}, True),
    ("It is seven.", {"any": ["7", "seven"]}, True),
    ("Buenos  días!", {"any": ["buenos días"]}, True),
    ("The answer is 14.", {"any": ["4"]}, False),
    ("It is 4.5 metres.", {"any": ["4"]}, False),
    ("Parisian cafés", {"any": ["Paris"]}, False),
    ("The answer is 15.", {"any": ["14", "fourteen"]}, False),
    # none
    ("Yes.", {"any": ["yes"], "none": ["no"]}, True),
    ("Yes, I know that the sun is hot.", {"any": ["yes"], "none": ["no"]}, True),
    ("No.", {"any": ["yes"], "none": ["no"]}, False),
    ("Yes and no.", {"any": ["yes"], "none": ["no"]}, False),
    ("Sam is shorter.", {"none": ["Tom is shorter"]}, True),
    # regex (IGNORECASE)
    ("H-O-U-S-E", {"regex": r"\bh\W{0,3}o\W{0,3}u\W{0,3}s\W{0,3}e\b"}, True),
    ("house", {"regex": r"\bh\W{0,3}o\W{0,3}u\W{0,3}s\W{0,3}e\b"}, True),
    ("horse", {"regex": r"\bh\W{0,3}o\W{0,3}u\W{0,3}s\W{0,3}e\b"}, False),
    ("Red, sure!", {"regex": r"^\W*sure\b"}, False),
    ("Sure! Blue.", {"regex": r"^\W*sure\b"}, True),
    # json_keys / json_values
    ('```json\n{"color": "red"}\n```', {"json_keys": ["color"]}, True),
    ('Here you go: {"color": "Red"} Hope it helps.', {"json_keys": ["color"], "json_values": {"color": ["red"]}}, True),
    ('{"name": "Ana", "age": 30}', {"json_keys": ["name", "age"], "json_values": {"age": ["30"]}}, True),
    ('{"answer": 8}', {"json_values": {"answer": ["8", "eight"]}}, True),
    ('{"colour": "red"}', {"json_keys": ["color"]}, False),
    ("{color: red}", {"json_keys": ["color"]}, False),
    ('{"color": "blue"}', {"json_keys": ["color"], "json_values": {"color": ["red"]}}, False),
    ("The color is red.", {"json_keys": ["color"]}, False),
    # list_items
    ("1. apple\n2. pear\n3. plum", {"list_items": 3}, True),
    ("Here:\n- red\n- green\n- blue", {"list_items": 3}, True),
    ("* cat\n* dog", {"list_items": 2}, True),
    ("Red, green and blue.", {"list_items": 3}, True),
    ("1. apple\n2. pear", {"list_items": 3}, False),
    ("I like apples.", {"list_items": 2}, False),
    ("Apples and pears.", {"list_items": 3}, False),
    ("Two pets are cats, dogs.", {"list_items": 2}, True),
    ("One example is a cat named Luna, who is a stray cat that was adopted by a family.", {"list_items": 2}, False),
    # max_words
    ("Cow.", {"max_words": 1}, True),
    ("A cow.", {"max_words": 2}, True),
    ("  \"Winter\"  ", {"max_words": 1}, True),
    ("The animal is a cow.", {"max_words": 2}, False),
    ("Blue, I think.", {"max_words": 2}, False),
    # uppercase
    ("COW", {"uppercase": True}, True),
    ("GOOD MORNING!", {"uppercase": True}, True),
    ("Cow", {"uppercase": True}, False),
    ("OK", {"uppercase": True}, False),
    ("123", {"uppercase": True}, False),
    # several keys: all must hold
    ("COW", {"uppercase": True, "any": ["cow"], "max_words": 1}, True),
    ("COW IS AN ANIMAL", {"uppercase": True, "any": ["cow"], "max_words": 1}, False),
])
def test_check(reply, spec, expected):
    assert check(reply, spec) is expected


def test_unknown_checker_key_raises():
    with pytest.raises(ValueError, match="anyy"):
        check("Paris", {"anyy": ["Paris"]})


@pytest.mark.parametrize("prompt, key", [
    ("Translate 'thank you' into Spanish.", "translate _ into _"),
    ("What's the opposite of 'early'?", "what s the opposite of _"),
    ("What is 7 + 5?", "what is _ _"),
    ("Who wrote Romeo and Juliet?", "who wrote _ and _"),
    ('Reply in JSON with key "color".', "reply in _ with key _"),
    ("Paris is in which country?", "paris is in which country"),
])
def test_template_key(prompt, key):
    assert template_key(prompt) == key


@pytest.mark.parametrize("a, b, expected", [
    ("What is 7 + 5?", "What is 12 + 30?", True),
    ("Translate 'cat' into French.", "Translate 'good night' into German.", True),
    ("What is the capital of Peru?", "What is the capital city of Peru?", True),
    ("Add 3 and 4.", "Subtract 2 from 9.", False),
    ("What is the sum of 6 and 2?", "What is the product of 3 and 5?", False),
])
def test_shares_template(a, b, expected):
    assert shares_template(a, b) is expected


ITEMS = {item["id"]: item for item in DEV + TEST}


# Item checkers on hand-written replies: correct phrasings accepted, wrong or evasive ones refused
# (several refused ones are the base model's replies that an earlier checker accepted).
@pytest.mark.parametrize("item_id, reply, expected", [
    ("know-012", "We live on the planet Earth.", True),
    ("know-012", "Earth.", True),
    ("know-012", "The planet we live on is called Kepler-41B, similar to Earth.", False),
    ("know-023", "It was a gift from France.", True),
    ("know-023", "It was a gift from the United States to the people of France.", False),
    ("word-012", "House is spelled H-O-U-S-E.", True),
    ("word-012", "1. H\n2. O\n3. U\n4. S\n5. E", True),
    ("word-012", "The word 'house' is a verb.", False),
    ("word-029", "A horse is an animal.", True),
    ("word-029", "The answer is 'horse'.", True),
    ("word-029", "Some things can be classified as either 'chair' or 'horse'.", False),
    ("multi-010", "Sam is shorter.", True),
    ("multi-010", "The shorter one is Sam.", True),
    ("multi-010", "Tom is shorter.", False),
    ("multi-010", "The shorter version of Sam is Alex.", False),
    ("multi-035", "Your book is about space.", True),
    ("multi-035", "As a space-themed AI, I can't help with that.", False),
    ("arith-001", "8 + 6 = 14", True),
    ("arith-001", "8 + 6 = 15", False),
    ("fmt-007", '```json\n{"color": "red"}\n```', True),
    ("fmt-007", "The tomato is red.", False),
    ("fmt-016", "- carrot\n- peas", True),
    ("fmt-016", "- Vegetable 1\n- Vegetable 2", False),
])
def test_item_checker(item_id, reply, expected):
    assert check(reply, ITEMS[item_id]["check"]) is expected


# -- schema ---------------------------------------------------------------------------------
def test_sizes_and_kinds():
    assert len(DEV) + len(TEST) >= 240
    for half in (DEV, TEST):
        assert half and {item["kind"] for item in half} == set(KINDS)


@pytest.mark.parametrize("item", DEV + TEST, ids=lambda item: item.get("id", "?"))
def test_item_schema(item):
    assert set(item) == {"id", "kind", "messages", "check"}
    assert item["kind"] in KINDS
    assert re.fullmatch(KINDS[item["kind"]] + r"-\d{3}", item["id"])
    roles = [m["role"] for m in item["messages"]]
    assert roles == (["user", "assistant", "user"] if item["kind"] == "multi_turn" else ["user"])
    for m in item["messages"]:
        assert set(m) == {"role", "content"} and isinstance(m["content"], str) and m["content"].strip()
    spec = item["check"]
    assert spec and set(spec) <= CHECK_KEYS
    for key in ("any", "none", "json_keys"):
        if key in spec:
            assert spec[key] and all(isinstance(s, str) and s.strip() for s in spec[key])
    if "regex" in spec:
        re.compile(spec["regex"])
    if "json_values" in spec:
        assert all(isinstance(v, list) and v for v in spec["json_values"].values())
    for key in ("list_items", "max_words"):
        if key in spec:
            assert isinstance(spec[key], int) and spec[key] > 0
    if "uppercase" in spec:
        assert spec["uppercase"] is True
    check("", spec)  # every key known to the checker


def test_ids_unique_and_halves_disjoint():
    ids = [item["id"] for item in DEV + TEST]
    assert len(ids) == len(set(ids))
    dev_prompts = {p for item in DEV for p in user_turns(item)}
    test_prompts = {p for item in TEST for p in user_turns(item)}
    assert not dev_prompts & test_prompts


def test_replay_pool_schema():
    assert len(POOL) >= 300
    for row in POOL:
        assert set(row) == {"prompt", "kind"} and row["prompt"].strip() and row["kind"].strip()
    assert len({row["prompt"] for row in POOL}) == len(POOL)
    assert len({row["kind"] for row in POOL}) >= 8


# -- disjointness -------------------------------------------------------------------------
def training_prompts():
    builtin = DATA / "builtin"
    paths = sorted(glob.glob(str(builtin / "*.train.jsonl")) + glob.glob(str(builtin / "*.validation.jsonl")))
    prompts = []
    for path in paths + [str(builtin / "general.jsonl")]:
        for row in read_jsonl(path):
            if "prompt" in row:
                prompts.append(row["prompt"])
            prompts.extend(m["content"] for m in row.get("messages", []) if m["role"] == "user")
    return prompts


def shared(prompts, others):
    """Pairs (p, o) that share a template. `shares_template` depends only on the two template
    keys, so one prompt per distinct key of `others` is enough (thousands of training rows have
    a few hundred keys)."""
    one_per_key = {}
    for o in others:
        one_per_key.setdefault(template_key(o), o)
    return [(p, o) for p in prompts for o in one_per_key.values() if shares_template(p, o)]


RETENTION_PROMPTS = [p for item in DEV + TEST for p in user_turns(item)]


def test_training_prompts_found():
    prompts = training_prompts()
    assert len(prompts) > 1500 and "What is the capital of France?" in prompts
    assert "Can you remind me what my name is?" in prompts  # a later user turn of a dialogue


@pytest.mark.parametrize("name", ["replay pool", "REPLAY_PROMPTS", "built-in data"])
def test_no_template_shared_with_training_prompts(name):
    others = {"replay pool": [row["prompt"] for row in POOL], "REPLAY_PROMPTS": list(REPLAY_PROMPTS),
              "built-in data": training_prompts()}[name]
    assert shared(RETENTION_PROMPTS, others) == []


def test_dev_and_test_share_no_template():
    dev = [p for item in DEV for p in user_turns(item)]
    test = [p for item in TEST for p in user_turns(item)]
    assert shared(dev, test) == []
