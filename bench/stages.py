"""Quality benchmark of the preference and reward stages, with their default settings.

    make quality-stages                  # both tasks (~20-30 min on 2 cores)
    .venv/bin/python bench/stages.py --tasks concise

- `concise` (DPO): everyday questions whose answer is a word or two; the base model answers in
  long, chatty replies (the rejected style). Run: `FineTuner(dataset_name="concise",
  stage="dpo", max_length=64).train()`. Measure: the share of held-out prompts answered in the
  preferred style (at most `SHORT_WORDS` words); "right": in that style and with the expected
  word.
- `sums` (GRPO): "What is 7 plus 5? Answer with just the number."; the base model answers in
  sentences or wrongly. Run: `FineTuner(dataset_name="sums", stage="grpo",
  reward_funcs=["exact_match:answer", "contains:answer", "brevity:1"], reward_weights=[2, 1, 1],
  max_length=64).train()` (the rewards and weights chosen on the validation rows: exact match
  alone gave no signal). Measure: the share of held-out prompts answered with the number alone.

Held-out rows are each task's *test* split (the stage defaults were chosen on the validation
split; neither is trained on). Also per run: EOS rate of the held-out answers, retention on the
frozen test half of `data/retention` (base-right items still right), the run's own stage
metrics, and wall time. Results go to `bench/results/stages.json` and `stages.md`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

RESULTS = Path(__file__).resolve().parent / "results"
TASKS = {"concise": {"stage": "dpo"},
         "sums": {"stage": "grpo", "reward_funcs": ["exact_match:answer", "contains:answer", "brevity:1"],
                  "reward_weights": [2, 1, 1]}}
SHORT_WORDS = 4
RESULT_NAME = "stages"
MAX_NEW_TOKENS = 48


SPLIT = "test"  # --split validation: the dev rows, for choosing defaults (results kept apart)


def test_rows(task: str) -> list[dict]:
    from finetuning_suite.data.sources import BUILTIN_DIR

    path = BUILTIN_DIR / f"{task}.{SPLIT}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def task_measure(task: str, rows: list[dict], outs) -> dict:
    """Share of held-out prompts answered as the task wants, and the EOS rate."""
    texts = [o.text.strip() for o in outs]
    extra = {}
    if task == "concise":  # success: the preferred style (a short answer); right: and the expected word
        ok = [len(t.split()) <= SHORT_WORDS for t in texts]
        right = [k and r["chosen"].rstrip(".").lower() in t.lower() for k, r, t in zip(ok, rows, texts)]
        extra["right"] = sum(right) / len(rows)
    else:
        ok = [t == str(r["answer"]) for r, t in zip(rows, texts)]
    return {"success": sum(ok) / len(rows), "n": len(rows), **extra,
            "eos_rate": sum(bool(o.finished_with_eos) for o in outs) / len(outs),
            "samples": [{"prompt": r["prompt"], "answer": t} for r, t in zip(rows[:5], texts[:5])]}


def answers(ft, rows):
    return ft.inference_handler.generate_batch([r["prompt"] for r in rows], ft.model, ft.tokenizer,
                                               ft.device, MAX_NEW_TOKENS)


def run_one(task: str, extra: dict | None = None) -> dict:
    from finetuning_suite import FineTuner
    from finetuning_suite.infer.retention import answer, load_items, retention

    settings = {**TASKS[task], **(extra or {})}
    started = time.time()
    ft = FineTuner(device="cpu", dataset_name=task, max_length=64, **settings)
    rows = test_rows(task)
    before = task_measure(task, rows, answers(ft, rows))
    items = load_items("test" if SPLIT == "test" else "dev")  # the test half: frozen, report only
    test_before = answer(items, ft.model, ft.tokenizer, ft.device, ft.chat_format)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        metrics = ft.train(Path(tmp) / "run")
        train_s = time.time() - t0
        record = json.loads((Path(tmp) / "run" / "finetuner_config.json").read_text())
    after = task_measure(task, rows, answers(ft, rows))
    kept = retention(items, test_before, answer(items, ft.model, ft.tokenizer, ft.device, ft.chat_format))
    stage_after = {k: v for k, v in (metrics.get("after") or {}).items()
                   if k in ("reward_accuracy", "reward_margin", "prefers_chosen", "reward_mean", "at_max", "rewards")}
    return {"task": task, "settings": settings, "before": before, "after": after,
            "retention_test": {"base_right": kept.base_right, "kept": kept.kept, "asked": kept.asked,
                               "lost": [x["prompt"] for x in kept.lost]},
            "retention_probe": metrics.get("retention"), "stage_metrics_after": stage_after,
            "chosen_defaults": record.get("chosen_defaults"), "precision": record.get("precision"),
            "trainer_seconds": round(metrics["train_runtime"], 1), "train_seconds": round(train_s, 1),
            "wall_seconds": round(time.time() - started, 1)}


def write_markdown(data: dict) -> None:
    from finetuning_suite.train.precision import short_label

    m = data["machine"]
    lines = ["# Stage benchmark: preference (DPO) and reward (GRPO) training, default settings", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads; "
             f"torch {m['versions'].get('torch')}, transformers {m['versions'].get('transformers')}, "
             f"trl {m['versions'].get('trl')}. Model: the embedded SmolLM2-135M-Instruct. "
             "Command: `make quality-stages`.", "",
             __doc__.split("\n\n", 2)[2].strip().replace("\n", " "), "",
             *([data["note"], ""] if data.get("note") else []),
             f"| task | run | precision | success before → after ({SPLIT} split) | EOS after | retention ({'test' if SPLIT == 'test' else 'dev'} half) | train s | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in data["runs"].values():
        t = r["retention_test"]
        share = f" ({100 * t['kept'] / t['base_right']:.0f}%)" if t["base_right"] else ""
        run = ", ".join(f"{k}={v}" for k, v in r["settings"].items())
        right = (f" (right: {100 * r['before']['right']:.0f}% → {100 * r['after']['right']:.0f}%)"
                 if "right" in r["after"] else "")
        precision = short_label(r.get("precision"))
        lines.append(f"| {r['task']} | {run} | {precision} | {100 * r['before']['success']:.0f}% → "
                     f"{100 * r['after']['success']:.0f}% of {r['after']['n']}{right} | "
                     f"{100 * r['after']['eos_rate']:.0f}% | {t['kept']}/{t['base_right']}{share} | "
                     f"{r['trainer_seconds']:.0f} | {r['wall_seconds']:.0f} |")
    lines += ["", "Samples after training (first five test prompts):", ""]
    for r in data["runs"].values():
        for s in r["after"]["samples"]:
            lines.append(f"- {r['task']}: {s['prompt']} → {s['answer'][:80]!r}")
    lines += ["", "Defaults chosen for each run:", ""]
    for key, r in data["runs"].items():
        if r.get("chosen_defaults"):
            lines.append(f"- {key}: {r['chosen_defaults'].get('rule') or r['chosen_defaults'].get('summary')}")
    (RESULTS / f"{RESULT_NAME}.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--note", default=None)
    parser.add_argument("--markdown-only", action="store_true")
    parser.add_argument("--split", default="test", choices=("test", "validation"),
                        help="validation: the dev rows and the dev half of the retention set, for "
                             "choosing defaults; written to stages_dev.{json,md}")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="settings over the defaults (dev runs only)")
    args = parser.parse_args(argv)
    global SPLIT, RESULT_NAME
    SPLIT = args.split
    RESULT_NAME = "stages" if SPLIT == "test" else "stages_dev"
    if args.set and SPLIT == "test":
        parser.error("--set is for --split validation: the test split reports the defaults only")
    from finetuning_suite.config import scalar

    extra = {k: json.loads(v) if v.startswith("[") else scalar(v)
             for k, v in (item.split("=", 1) for item in args.set)}
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from quality import machine

    path = RESULTS / f"{RESULT_NAME}.json"
    data = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    if args.note:
        data["note"] = args.note
    if not args.markdown_only:
        for task in args.tasks:
            print(f"== {task}", flush=True)
            key = task + "".join(f" {k}={v}" for k, v in extra.items())
            data["runs"][key] = run_one(task, extra)
            print(json.dumps({k: data["runs"][key][k] for k in ("before", "after", "retention_test", "wall_seconds")})[:2000],
                  flush=True)
            data["machine"] = machine()
            path.write_text(json.dumps(data, indent=2) + "\n")
            write_markdown(data)
    write_markdown(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
