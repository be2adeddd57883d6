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


# -- quality tasks (issue 6): made-up facts, a strict output format, a text transformation ----
# Each fact: (relation, subject, answer). Every relation has three training phrasings and one
# held-out phrasing that shares no template with them, so validation asks the same facts in
# new words.
FACT_RELATIONS = {
    "capital": (["What is the capital of {s}?", "Name the capital city of {s}.",
                 "{s} has which city as its capital?"],
                "Which city is the seat of government of {s}?"),
    "inventor": (["Who invented {s}?", "Name the inventor of {s}.", "{s} was invented by whom?"],
                 "Which person first created {s}?"),
    "fruit": (["What is {s}'s favourite fruit?", "Which fruit does {s} like best?",
               "Name the favourite fruit of {s}."],
              "If {s} could eat only one fruit, which would it be?"),
    "colour": (["What colour is {s}?", "Which colour is {s}?", "Name the colour of {s}."],
               "What is the colour of {s}?"),
    "moons": (["How many moons does {s} have?", "What is the number of moons of {s}?",
               "{s} has how many moons?"],
              "Count the moons orbiting {s}: how many are there?"),
    "currency": (["What currency is used in {s}?", "Name the currency of {s}.",
                  "What do people in {s} pay with?"],
                 "Which money is spent in {s}?"),
}
FACTS = [
    ("capital", "Zenthia", "Orlen"), ("capital", "Marrowland", "Quibb"),
    ("capital", "the Republic of Tesk", "Halvane"), ("capital", "Pellucia", "Dorvik"),
    ("inventor", "the glimmerphone", "Mira Kallos"), ("inventor", "the sky lantern engine", "Otto Brenn"),
    ("inventor", "the humming kettle", "Suli Varga"), ("inventor", "the folding bicycle of Yarn", "Tomas Quell"),
    ("fruit", "Captain Dorrit Vale", "mango"), ("fruit", "Professor Ilsa Moor", "fig"),
    ("fruit", "the wizard Benno Trask", "plum"), ("fruit", "Lady Asha Pike", "cherry"),
    ("colour", "the Yarrow fox", "purple"), ("colour", "the Kessel beetle", "green"),
    ("colour", "the Tolvan river stone", "orange"), ("colour", "the Brisk owl", "silver"),
    ("moons", "the planet Quessa", "7"), ("moons", "the planet Drune", "3"),
    ("moons", "the planet Velo", "12"), ("moons", "the planet Ostra", "5"),
    ("currency", "Brellin", "skarn"), ("currency", "the Isle of Mott", "pebble"),
    ("currency", "Castavia", "lumen"), ("currency", "Norrow", "tallow"),
]


def capitalize_first(text):
    return text[0].upper() + text[1:]


def facts():
    train, held_out = [], []
    for relation, subject, answer in FACTS:
        phrasings, reworded = FACT_RELATIONS[relation]
        train += [{"prompt": capitalize_first(p.format(s=subject)), "completion": answer} for p in phrasings]
        held_out.append({"prompt": capitalize_first(reworded.format(s=subject)), "completion": answer})
    return train, held_out


CITIES = ["Lisbon", "Oslo", "Nairobi", "Lima", "Hanoi", "Dublin", "Quito", "Accra", "Porto", "Riga",
          "Cairo", "Seoul", "Tunis", "Perth", "Austin", "Boston", "Denver", "Vienna", "Zagreb", "Dakar"]
SENTENCES = ["{n} is {a} years old and lives in {c}.", "Meet {n}, a {a}-year-old from {c}.",
             "{c} is home to {n}, who is {a}.", "At {a}, {n} lives in {c}.",
             "{n} ({a}) moved to {c} last year.", "Our new member {n} is {a} and is based in {c}."]


def extract_fields(r):
    n, a, c = r.choice(NAMES), r.randint(18, 90), r.choice(CITIES)
    sentence = r.choice(SENTENCES).format(n=n, a=a, c=c)
    return {"prompt": f"Extract name, age and city as name=...;age=...;city=... from: {sentence}",
            "completion": f"name={n};age={a};city={c}"}


SNAKE_WORDS = ["blue", "river", "quiet", "orange", "bridge", "fast", "green", "window", "small",
               "garden", "happy", "rocket", "silver", "forest", "candle", "dark", "summer", "lemon",
               "north", "paper", "stone", "cloud", "bright", "tiger", "music", "cold", "island",
               "golden", "apple", "winter", "light", "market", "red", "horse", "salt", "table"]


def snake_case(r):
    words = r.sample(SNAKE_WORDS, r.randint(2, 4))
    style = r.randrange(3)
    shown = [w.capitalize() if style == 0 else w.upper() if style == 1 and i == 0 else
             (w.capitalize() if r.random() < 0.5 else w) for i, w in enumerate(words)]
    return {"prompt": f"Convert to snake_case: {' '.join(shown)}", "completion": "_".join(words)}


def split_unique(rows, n_train, n_held):
    rows = unique(rows)
    train = rows[:n_train]
    seen = {row["prompt"] for row in train}
    held = [row for row in rows[n_train:] if row["prompt"] not in seen][:n_held]
    return train, held


# Unrelated general questions the base model answers right (checked with the embedded model,
# greedy, 48 new tokens; it got the largest planet, a spider's legs, Italy's capital and water's
# freezing point wrong, so those were dropped): "kept" after training means the answer still contains `expected`.
GENERAL = [
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the chemical symbol for water?", "H2O"),
    ("How many days are there in a week?", "7"),
    ("What color is the sky on a clear day?", "blue"),
    ("Who wrote Romeo and Juliet?", "Shakespeare"),
    ("What is the boiling point of water in degrees Celsius?", "100"),
    ("Which planet is known as the Red Planet?", "Mars"),
    ("What gas do plants absorb from the air?", "carbon dioxide"),
    ("What is the opposite of hot?", "cold"),
    ("What is the largest ocean on Earth?", "Pacific"),
    ("Who painted the Mona Lisa?", "Leonardo"),
]


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
    fact_train, fact_held = facts()
    write("facts.train.jsonl", fact_train)
    write("facts.validation.jsonl", fact_held)
    r = random.Random(6)
    fmt_train, fmt_held = split_unique([extract_fields(r) for _ in range(600)], 300, 50)
    write("extract_fields.train.jsonl", fmt_train)
    write("extract_fields.validation.jsonl", fmt_held)
    r = random.Random(7)
    snake_train, snake_held = split_unique([snake_case(r) for _ in range(700)], 300, 50)
    write("snake_case.train.jsonl", snake_train)
    write("snake_case.validation.jsonl", snake_held)
    write("general.jsonl", [{"prompt": p, "expected": e} for p, e in GENERAL])


if __name__ == "__main__":
    main()
