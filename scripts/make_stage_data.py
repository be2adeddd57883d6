"""Regenerate the built-in data of the preference and reward stages (deterministic):

    .venv/bin/python scripts/make_stage_data.py

- `concise` (DPO, ORPO, KTO): everyday questions whose answer is a word or two; `chosen` is that
  answer ("Moo."), `rejected` the same answer buried in a long, chatty reply (the style a small
  chat model falls into). Splits: train (tune nothing on it but training), validation (the dev
  rows the stage defaults were chosen on) and test (reported, never tuned on).
- `sums` (GRPO): "What is 7 plus 5? Answer with just the number." with the `answer` column; a
  reward of 1.0 needs the number and nothing else. Same three splits.

Every answer is written or computed here, so the data is correct by construction. No prompt
shares a question template with the retention prompts (checked below, and by
tests/test_retention_data.py). Written for this project, Apache-2.0 like the package.
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "finetuning_suite" / "data" / "builtin"
sys.path.insert(0, str(ROOT))

SOUNDS = {"cow": "Moo", "dog": "Woof", "cat": "Meow", "duck": "Quack", "sheep": "Baa", "lion": "Roar",
          "owl": "Hoot", "horse": "Neigh", "pig": "Oink", "snake": "Hiss", "bee": "Buzz", "frog": "Ribbit",
          "rooster": "Cock-a-doodle-doo", "mouse": "Squeak", "donkey": "Hee-haw", "wolf": "Howl"}
LEGS = {"spider": 8, "ant": 6, "bird": 2, "horse": 4, "octopus": 8, "beetle": 6, "chicken": 2,
        "goat": 4, "crab": 10, "penguin": 2, "elephant": 4, "butterfly": 6}
WORKERS = {"flies a plane": "A pilot", "fixes teeth": "A dentist", "bakes bread": "A baker",
           "puts out fires": "A firefighter", "teaches a class": "A teacher", "cuts hair": "A barber",
           "grows crops": "A farmer", "delivers letters": "A postman", "treats sick animals": "A vet",
           "repairs pipes": "A plumber", "sells meat": "A butcher", "designs buildings": "An architect"}
HOMES = {"bees": "A hive", "birds": "A nest", "rabbits": "A burrow", "spiders": "A web",
         "fish": "Water", "bears": "A den", "horses": "A stable", "pigs": "A sty", "ants": "An anthill",
         "dogs": "A kennel", "bats": "A cave", "beavers": "A lodge"}
TOOLS = {"cut paper": "Scissors", "drive in a nail": "A hammer", "tell the time": "A clock",
         "see far away stars": "A telescope", "sweep the floor": "A broom", "write on a blackboard": "Chalk",
         "dig a hole": "A shovel", "open a locked door": "A key", "measure a line": "A ruler",
         "boil water": "A kettle", "eat soup": "A spoon", "take a photo": "A camera"}
BABIES = {"dog": "A puppy", "cat": "A kitten", "cow": "A calf", "horse": "A foal", "sheep": "A lamb",
          "bear": "A cub", "chicken": "A chick", "frog": "A tadpole", "goat": "A kid", "kangaroo": "A joey",
          "duck": "A duckling", "swan": "A cygnet", "deer": "A fawn", "pig": "A piglet", "goose": "A gosling",
          "owl": "An owlet", "eagle": "An eaglet", "seal": "A pup"}
FRUITS = {"banana": "Yellow", "lime": "Green", "cherry": "Red", "blueberry": "Blue", "plum": "Purple",
          "lemon": "Yellow", "strawberry": "Red", "orange": "Orange", "kiwi": "Brown", "grape": "Green or purple",
          "raspberry": "Red", "pomegranate": "Red"}
RAMBLE = [
    "That's a great question, and I'm happy to help! {a} is the answer here. There is actually quite a "
    "lot one could say about this: people have wondered about it for a long time, and the details can "
    "depend a little on the situation. But in general, the short version is {b}. I hope that helps, "
    "and let me know if you have any other questions!",
    "Sure! Let me explain this in a bit of detail. When you think about it carefully, the answer turns "
    "out to be {b}. Of course, there are always exceptions and interesting side notes, and it is worth "
    "remembering that the world is full of surprises. Still, most people would agree: {a}. Feel free "
    "to ask me anything else!",
    "Great question! Many people ask me this. The simple answer is {b}, but it is worth taking a moment "
    "to think about why. There are several factors at play, and each of them adds a little nuance. In "
    "summary, though, {a} is what you are looking for. Is there anything else you would like to know?",
]


def concise_rows() -> list[dict]:
    rows = []
    for animal, sound in SOUNDS.items():
        rows.append((f"Which noise does a {animal} make?", f"{sound}."))
    for animal, n in LEGS.items():
        rows.append((f"Count the legs of a {animal} for me.", f"{n}."))
    for job, who in WORKERS.items():
        rows.append((f"Who is the person that {job}?", f"{who}."))
    for animal, home in HOMES.items():
        rows.append((f"Where do {animal} usually live?", f"{home}."))
    for task, tool in TOOLS.items():
        rows.append((f"Which thing do people use to {task}?", f"{tool}."))
    for animal, baby in BABIES.items():
        rows.append((f"A young {animal} is called what?", f"{baby}."))
    for fruit, colour in FRUITS.items():
        rows.append((f"Tell me the usual colour of a ripe {fruit}.", f"{colour}."))
    r = random.Random(7)
    out = []
    for prompt, answer in rows:
        bare = answer.rstrip(".")
        ramble = r.choice(RAMBLE).format(a=bare, b=bare[0].lower() + bare[1:] if bare[1:2].islower() else bare)
        out.append({"prompt": prompt, "chosen": answer, "rejected": ramble})
    return out


def sums_rows() -> list[dict]:
    r = random.Random(11)
    # small numbers: the task is the form (the number alone), which a 135M model gets wrong, more
    # than the sum, which it mostly gets right at this size
    pairs = [(a, b) for a in range(1, 13) for b in range(1, 13)]
    r.shuffle(pairs)
    return [{"prompt": f"What is {a} plus {b}? Answer with just the number.", "answer": str(a + b)}
            for a, b in pairs]


def split(rows, seed: int, n_dev: int, n_test: int):
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows[n_dev + n_test:], rows[:n_dev], rows[n_dev:n_dev + n_test]


def write(name: str, rows: list[dict]) -> None:
    (OUT / name).write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def check_templates(prompts: list[str]) -> None:
    from finetuning_suite.infer.checks import shares_template
    from finetuning_suite.infer.retention import load_items

    retention = [m["content"] for half in ("dev", "test") for item in load_items(half)
                 for m in item["messages"] if m["role"] == "user"]
    clashes = [(p, q) for p in prompts for q in retention if shares_template(p, q)]
    if clashes:
        raise SystemExit(f"prompts share a template with the retention prompts: {clashes[:5]}")


def main():
    concise = concise_rows()
    sums = sums_rows()
    check_templates([r["prompt"] for r in concise + sums])
    train, dev, test = split(concise, 3, 16, 20)
    write("concise.train.jsonl", train)
    write("concise.validation.jsonl", dev)
    write("concise.test.jsonl", test)
    train, dev, test = split(sums, 5, 20, 20)
    write("sums.train.jsonl", train)
    write("sums.validation.jsonl", dev)
    write("sums.test.jsonl", test)
    print(f"concise: {len(concise)} rows, sums: {len(sums)} rows")


if __name__ == "__main__":
    main()
