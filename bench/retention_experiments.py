"""Choosing how the defaults keep what the model knew: experiments on the DEV half only.

    .venv/bin/python bench/retention_experiments.py --name baseline
    .venv/bin/python bench/retention_experiments.py --name pool64 --set replay_pool=pool replay_rows=64

Each experiment trains the embedded model on one case with the defaults plus the settings given
(`--set name=value`: FineTuner options), then measures the case's own success and retention on
the whole dev half of the retention prompts (`finetuning_suite.infer.retention`): of the dev
items the base model answers right, how many it still answers right. The frozen test half is
never read here. Cases:

- `facts12`: the issue's case: a dozen made-up facts (`tests/docs_fixtures/facts.jsonl`) as
  prompt/completion rows, `train(num_train_epochs=10)`; success = the 12 answers contained in
  the replies to the 12 questions.
- `snake_case`, `extract_fields`, `facts` (built-in tasks): success = held-out exact match.

Results are appended to `bench/results/retention_experiments.jsonl` (one line per experiment)
and summarised in `bench/results/retention_experiments.md`.
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
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BASE_CACHE = RESULTS / "retention_base.json"


def _value(text: str):
    from finetuning_suite.config import scalar

    return scalar(text)


def base_replies(ft, items, key: str) -> list[str]:
    """The base model's dev replies (measured once per model, recorded in retention_base.json)."""
    from finetuning_suite.infer.retention import answer

    cache = json.loads(BASE_CACHE.read_text()) if BASE_CACHE.exists() else {}
    if key in cache and len(cache[key]["replies"]) == len(items):
        return cache[key]["replies"]
    replies = answer(items, ft.model, ft.tokenizer, ft.device, ft.chat_format)
    from finetuning_suite.infer.retention import score

    cache[key] = {"replies": replies, "right": sum(score(items, replies)), "asked": len(items)}
    BASE_CACHE.write_text(json.dumps(cache, indent=1) + "\n")
    return replies


def case_rows(case: str):
    if case == "facts12":
        return str(ROOT / "tests" / "docs_fixtures" / "facts.jsonl")
    return case


def run(name: str, case: str, settings: dict, epochs: float | None) -> dict:
    import torch

    from finetuning_suite import FineTuner
    from finetuning_suite.infer.retention import answer, load_items, retention

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 2))
    items = load_items("dev")
    method = settings.get("method", "lora")
    quantized = settings.get("quantize") or method == "qlora"
    ft = FineTuner(dataset_name=case_rows(case), max_length=64, **settings)
    before = base_replies(ft, items, f"embedded-{'4bit' if quantized else 'fp32'}-dev")
    with tempfile.TemporaryDirectory() as tmp:
        started = time.time()
        metrics = ft.train(Path(tmp) / "run", num_train_epochs=epochs)
        train_s = time.time() - started
    after = answer(items, ft.model, ft.tokenizer, ft.device, ft.chat_format)
    kept = retention(items, before, after)
    if case == "facts12":
        rows = [json.loads(line) for line in Path(case_rows(case)).read_text().splitlines()]
        replies = [ft.generate(r["prompt"], 16) for r in rows]
        success = sum(r["completion"].lower() in reply.lower() for r, reply in zip(rows, replies)) / len(rows)
    else:
        success = ft.evaluate()["exact_match"]
    return {"name": name, "case": case, "settings": settings, "epochs": epochs,
            "success": success, "dev_base_right": kept.base_right, "dev_kept": kept.kept,
            "dev_kept_share": kept.share, "dev_gained": kept.gained,
            "lost": [item["prompt"] for item in kept.lost], "train_s": round(train_s, 1),
            "chosen": ft.chosen_defaults.get("rule"), "replay_rows": ft.data_stats.get("self_replay_rows"),
            "train_loss": metrics.get("train_loss"), "adapter_shrink": metrics.get("adapter_shrink"),
            "created": time.strftime("%Y-%m-%d %H:%M")}


def _scale(r: dict) -> str:
    """The adapter scale the run ended with: '-' before the shrink existed or where it was off."""
    shrink = r.get("adapter_shrink")
    return f"{shrink['scale']:.2f}" if shrink else "-"


def summarise(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    lines = ["# Retention experiments (dev half only)", "",
             "Every row: the embedded model, `bench/retention_experiments.py`; success = the case's own "
             "measure (facts12: the 12 answers given; tasks: held-out exact match); kept = dev items "
             "the base answered right and still answers right after training. The test half was "
             "not used.", "",
             "| experiment | case | settings | epochs | success | dev kept | replay rows | adapter scale | train s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        settings = ", ".join([f"{k}={v}" for k, v in r["settings"].items()] + r.get("patch", [])) or "defaults"
        lines.append(f"| {r['name']} | {r['case']} | {settings} | {r['epochs'] or 'auto'} | "
                     f"{r['success']:.0%} | {r['dev_kept']}/{r['dev_base_right']} "
                     f"({r['dev_kept_share']:.0%}) | {r['replay_rows']} | {_scale(r)} | {r['train_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True)
    p.add_argument("--case", default="facts12")
    p.add_argument("--epochs", type=float, default=None, help="default: 10 for facts12, else auto")
    p.add_argument("--set", nargs="*", default=[], help="FineTuner options as name=value")
    p.add_argument("--patch", nargs="*", default=[],
                   help="module constants to try, as module.NAME=value (e.g. train.distill.WEIGHT=2)")
    args = p.parse_args(argv)
    import importlib

    for item in args.patch:
        target, value = item.split("=", 1)
        module, name = target.rsplit(".", 1)
        setattr(importlib.import_module(f"finetuning_suite.{module}"), name, _value(value))
    settings = {k: _value(v) for k, v in (s.split("=", 1) for s in args.set)}
    epochs = args.epochs if args.epochs is not None else (10 if args.case == "facts12" else None)
    result = run(args.name, args.case, settings, epochs)
    result["patch"] = args.patch
    out = RESULTS / "retention_experiments.jsonl"
    with out.open("a") as fh:
        fh.write(json.dumps(result) + "\n")
    (RESULTS / "retention_experiments.md").write_text(summarise(out))
    print(json.dumps({k: v for k, v in result.items() if k != "lost"}, indent=1))
    print("lost:", result["lost"])


if __name__ == "__main__":
    sys.exit(main())
