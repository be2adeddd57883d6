"""Self-replay: the base model's own answers to general prompts, mixed into a fine-tuning set.

A small LoRA run at a learning rate high enough to learn a dozen facts also drifts the model's
general behaviour (measured: "What is the capital of France?" no longer answered "Paris").
Training on a few rows of the *base* model's own answers to unrelated prompts anchors that
behaviour at almost no cost: the targets are what the model already says, so their loss starts
low and only pulls back drift. The answers must be generated *before* training, with the same
chat template and greedy decoding as everywhere else.

    from finetuning_suite.data.replay import self_replay_rows
    rows = self_replay_rows(lambda p: ft.generate(p, 64), 16)          # one prompt at a time
    rows = self_replay_rows(batch_generate, 16, batched=True)          # a list -> list callable
    replay = replay_dataset(batch_generate, 16, tokenizer, model.config, chat_format, columns)

The prompts below are distinct from the benchmark's held-out general questions
(`builtin/general.jsonl`), so "general answers kept" is never measured on a replayed prompt.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Callable, Iterable, Sequence

# Short-answer general prompts (facts, definitions, tiny tasks): their base answers are short,
# so replay rows cost little training time. None of them appears in builtin/general.jsonl.
# The embedded model ends 47 of the first 80 within REPLAY_MAX_NEW_TOKENS.
REPLAY_PROMPTS: tuple[str, ...] = (
    "What is the capital of Germany?",
    "What is the capital of Spain?",
    "What is the capital of Canada?",
    "How many hours are there in a day?",
    "What is the largest mammal on Earth?",
    "Who wrote the play Hamlet?",
    "What is the chemical symbol for gold?",
    "How many continents are there?",
    "What is the square root of 81?",
    "What is 12 times 12?",
    "Which animal is known as the king of the jungle?",
    "What language is spoken in Brazil?",
    "What is the tallest mountain in the world?",
    "How many sides does a triangle have?",
    "What is the main ingredient of guacamole?",
    "What do bees make?",
    "Give me a synonym for happy.",
    "What is the plural of mouse?",
    "Name a primary color.",
    "What is the opposite of up?",
    "Which organ pumps blood through the body?",
    "What is the currency of the United Kingdom?",
    "Who was the first person to walk on the Moon?",
    "What is H2O commonly called?",
    "How many minutes are in an hour?",
    "What is the fastest land animal?",
    "Which season comes after spring?",
    "What is the smallest prime number?",
    "Translate 'thank you' into Spanish.",
    "What is the longest river in Africa?",
    "Name the star at the center of our solar system.",
    "What do you call a baby cat?",
    "Write a one-sentence greeting for a new colleague.",
    "Explain in one sentence what a verb is.",
    "What is the capital of Australia?",
    "How many strings does a standard guitar have?",
    "Which metal is liquid at room temperature?",
    "What is the first letter of the English alphabet?",
    "What shape has four equal sides?",
    "What is the hardest natural substance?",
    # Added after the first quality runs (issue 6): the question forms that short fact sets use
    # (capital of, who invented/wrote/painted, what colour, how many, which currency), so the
    # model sees real-world questions of each form answered as before. Written knowing which
    # benchmark questions had been lost; none of them is here.
    "What is the capital of Italy?",
    "What is the capital of Egypt?",
    "What is the capital of Russia?",
    "What is the capital of China?",
    "What is the capital of India?",
    "What is the capital of Mexico?",
    "Who invented the telephone?",
    "Who invented the light bulb?",
    "Who discovered penicillin?",
    "Who developed the theory of relativity?",
    "Who wrote Pride and Prejudice?",
    "Who painted The Starry Night?",
    "Who composed the Fifth Symphony?",
    "Who was the first President of the United States?",
    "What colour is grass?",
    "What colour is a ripe banana?",
    "What colour is snow?",
    "What colour are most leaves in summer?",
    "What colour do you get by mixing blue and yellow?",
    "How many legs does a dog have?",
    "How many moons does Earth have?",
    "How many planets are in our solar system?",
    "How many months are in a year?",
    "How many wheels does a bicycle have?",
    "How many legs does an insect have?",
    "What currency is used in Japan?",
    "What currency is used in the United States?",
    "What currency is used in most of Europe?",
    "What is the favourite food of a panda?",
    "What do cows drink?",
    "What is the freezing point of water in degrees Fahrenheit?",
    "Which planet is closest to the Sun?",
    "What is the largest planet in our solar system?",
    "What is the largest desert in the world?",
    "What is the chemical symbol for oxygen?",
    "What gas do humans breathe out?",
    "What is the opposite of big?",
    "What is the opposite of day?",
    "What language is spoken in France?",
    "Which ocean lies between Europe and North America?",
)


# Answers longer than this are not used (they would be cut off mid-sentence). 48, not 64: long
# answers take most of a short-answer task's (per-token) loss and slow each step; 32 leaves too
# few usable rows. Measured on the facts task: bench/results/defaults_experiments.md.
REPLAY_MAX_NEW_TOKENS = 48


def self_replay_rows(generate: Callable, n: int, *, batched: bool = False,
                     prompts: Sequence[str] = REPLAY_PROMPTS) -> list[dict]:
    """Up to `n` prompt/completion rows whose completions are the model's own answers.

    generate: `generate(prompt) -> str`, or with `batched=True`, `generate(list_of_prompts) ->
        list_of_answers` (one `generate` call for all). An answer that is `None` or blank is
        skipped (return `None` for a generation that hit its length limit without EOS: a cut-off
        answer followed by a trained EOS would teach the model to stop mid-sentence).
    n: how many rows at most (the first `n` usable prompts, in the fixed order above, so the
        rows are deterministic for a given model). `n <= 0` gives [].
    prompts: the prompts to answer (default `REPLAY_PROMPTS`).
    """
    if n <= 0:
        return []
    # Batched: ask twice as many as needed (the embedded model ends ~60% of these answers within
    # 48 tokens; the rest come back None and are skipped). One at a time: ask lazily.
    asked = list(prompts) if not batched else list(prompts)[: 2 * n]
    answers: Iterable = generate(asked) if batched else (generate(p) for p in asked)
    rows = []
    for prompt, answer in zip(asked, answers):
        if answer is None or not str(answer).strip():
            continue
        rows.append({"prompt": prompt, "completion": str(answer).strip()})
        if len(rows) == n:
            break
    return rows


POOL_FILE = Path(__file__).parent / "retention" / "replay_pool.jsonl"


@functools.lru_cache(maxsize=None)
def pool_prompts() -> tuple[str, ...]:
    """The broad replay pool (`retention/replay_pool.jsonl`, many kinds of general requests,
    none sharing a question template with the retention prompts), interleaved by kind (one of
    each kind in turn, in file order), so that the first n prompts already span every kind."""
    rows = [json.loads(line) for line in POOL_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]
    by_kind: dict[str, list[str]] = {}
    for row in rows:
        by_kind.setdefault(row["kind"], []).append(row["prompt"])
    queues = list(by_kind.values())
    out = []
    while any(queues):
        for queue in queues:
            if queue:
                out.append(queue.pop(0))
    return tuple(out)


def replay_dataset(answers: Callable, n: int, tokenizer, model_config, chat_format, columns,
                   prompts: Sequence[str] | None = None, train_on_inputs: bool = False):
    """Up to `n` self-replay rows, tokenized as training rows of the run are (`chat_format`), with
    `columns` only (the training set's), or None when no answer was usable. `answers` is a
    batched `list of prompts -> list of answers or None` callable (see `self_replay_rows`)."""
    rows = self_replay_rows(answers, n, batched=True, prompts=REPLAY_PROMPTS if prompts is None else prompts)
    if not rows:
        return None
    import datasets

    from .preprocessing import DefaultPreprocessor

    tokenized = DefaultPreprocessor(train_on_inputs=train_on_inputs)(
        datasets.Dataset.from_list(rows), tokenizer, model_config, chat_format=chat_format)
    return tokenized.select_columns(list(columns))
