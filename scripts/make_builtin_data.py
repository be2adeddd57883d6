"""Regenerate the built-in datasets in finetuning_suite/data/ (deterministic):

    .venv/bin/python scripts/make_builtin_data.py

Every answer is computed, so the data is correct by construction. Written for this project and
released with it under the Apache-2.0 licence (see finetuning_suite/data/README.md).
"""
import calendar
import datetime as dt
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "finetuning_suite" / "data" / "builtin"
DAYS = list(calendar.day_name)
NAMES = ["Ana", "Ben", "Chloe", "Dmitri", "Emeka", "Fatima", "Goro", "Hana", "Ivan", "Julia",
         "Kofi", "Lena", "Mateo", "Nia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tara"]
WORDS = ["garden", "window", "planet", "orange", "silver", "rocket", "bridge", "candle", "forest",
         "guitar", "island", "jacket", "kitten", "lemon", "marble", "needle", "pencil", "river",
         "summer", "tomato", "violin", "wallet", "yellow", "zebra", "basket", "castle", "dragon"]
SYSTEMS = [None, None, "You are a friendly, concise assistant.", "You are a helpful assistant. Answer briefly."]


def turn(role, content):
    return {"role": role, "content": content}


def arithmetic(r):
    a, b, k = r.randint(2, 60), r.randint(2, 60), r.randint(2, 5)
    return [turn("user", f"What is {a} plus {b}?"), turn("assistant", f"{a} plus {b} is {a + b}."),
            turn("user", f"And if I multiply that by {k}?"),
            turn("assistant", f"{a + b} times {k} is {(a + b) * k}.")]


def minutes(r):
    h = r.randint(2, 12)
    return [turn("user", f"How many minutes are in {h} hours?"),
            turn("assistant", f"There are {h * 60} minutes in {h} hours.")]


def backwards(r):
    w = r.choice(WORDS)
    return [turn("user", f"How do you spell '{w}' backwards?"),
            turn("assistant", f"'{w}' spelled backwards is '{w[::-1]}'.")]


def letters(r):
    w = r.choice(WORDS)
    return [turn("user", f"How many letters are in the word '{w}'?"),
            turn("assistant", f"The word '{w}' has {len(w)} letters.")]


def weekday(r):
    d, n = r.randrange(7), r.randint(1, 6)
    return [turn("user", f"If today is {DAYS[d]}, what day will it be in {n} days?"),
            turn("assistant", f"In {n} days it will be {DAYS[(d + n) % 7]}.")]


def parity(r):
    n = r.randint(1, 999)
    return [turn("user", f"Is {n} even or odd?"),
            turn("assistant", f"{n} is {'even' if n % 2 == 0 else 'odd'}.")]


def sorting(r):
    nums = r.sample(range(1, 100), r.randint(3, 5))
    return [turn("user", f"Sort these numbers from smallest to largest: {', '.join(map(str, nums))}"),
            turn("assistant", ", ".join(map(str, sorted(nums))))]


def next_letter(r):
    c = chr(r.randint(ord("A"), ord("Y")))
    return [turn("user", f"Which letter comes after {c} in the alphabet?"),
            turn("assistant", f"{chr(ord(c) + 1)} comes after {c}.")]


def name_memory(r):
    name = r.choice(NAMES)
    return [turn("user", f"Hi! My name is {name}."),
            turn("assistant", f"Hello {name}, nice to meet you! How can I help you today?"),
            turn("user", "Can you remind me what my name is?"),
            turn("assistant", f"Of course: your name is {name}.")]


TOPICS = [arithmetic, minutes, backwards, letters, weekday, parity, sorting, next_letter, name_memory]


def dialogue(r):
    messages = r.choice(TOPICS)(r)
    system = r.choice(SYSTEMS)
    return {"messages": ([turn("system", system)] if system else []) + messages}


def iso_date(r, fmt):
    day = dt.date(1950, 1, 1) + dt.timedelta(days=r.randrange(365 * 80))
    month = calendar.month_name[day.month]
    text = {0: f"{month} {day.day}, {day.year}",
            1: f"{day.day} {month} {day.year}",
            2: f"{month[:3]} {day.day} {day.year}"}[fmt]
    return {"prompt": f"Rewrite this date in ISO 8601 format (YYYY-MM-DD): {text}",
            "completion": day.isoformat()}


def write(name, rows):
    path = OUT / name
    with path.open("w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    print(f"wrote {len(rows)} rows to {path}")


def unique(rows):
    seen, out = set(), []
    for row in rows:
        key = json.dumps(row, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


def main():
    r = random.Random(1234)
    dialogues = unique(dialogue(r) for _ in range(800))
    write("dialogue.train.jsonl", dialogues[:300])
    write("dialogue.validation.jsonl", dialogues[300:340])
    dates = unique(iso_date(r, i % 3) for i in range(700))
    train_prompts = {d["prompt"] for d in dates[:480]}
    held_out = [d for d in dates[480:] if d["prompt"] not in train_prompts][:60]
    write("iso_dates.train.jsonl", dates[:480])
    write("iso_dates.validation.jsonl", held_out)


if __name__ == "__main__":
    main()
