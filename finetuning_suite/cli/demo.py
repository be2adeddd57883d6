"""The main job: fine-tune the embedded SmolLM2-135M-Instruct to rewrite dates in ISO 8601, and
show that it learned (exact match on held-out dates, before and after).

    make run                                   # = .venv/bin/finetune demo
    .venv/bin/finetune demo --epochs 1 --eval-limit 20 --output-dir runs/x

About 5 minutes on 2 CPU cores (measured: 4 min 39 s, 190 s of it training, 0% -> 100% exact
match). The base model answers "March 5, 2021" with prose or a wrong date; after one epoch of
LoRA with the default settings it answers "2021-03-05".
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from ..data.sources import load_source
from ..model.loading import RUN_CONFIG_FILE
from ..finetuner import FineTuner
from ..train.report import write_report
from ..train.runinfo import write_json_atomic

TASK = "iso_dates"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="runs/iso_dates", help="where the adapter and run config go")
    parser.add_argument("--epochs", type=float, default=None,
                        help="training epochs (default: the defaults' rule, 1 epoch for these 480 rows)")
    parser.add_argument("--eval-limit", type=int, default=60, help="held-out prompts to score (default: all 60)")
    parser.add_argument("--samples", type=int, default=6, help="before/after samples to print")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    held_out = load_source(TASK)["validation"]
    held_out = held_out.select(range(min(args.eval_limit, len(held_out))))
    print(f"Loading the embedded model; task: {TASK} ({len(held_out)} held-out prompts)")
    ft = FineTuner(dataset_name=TASK, max_length=16, num_train_epochs=args.epochs, save_strategy="no",
                   overwrite_output_dir=True,  # the demo owns its folder: a rerun replaces it
                   output_dir=args.output_dir)
    started = time.time()
    before = ft.evaluate(held_out)
    print(f"Before training: exact match {before['exact_match']:.0%} on {len(held_out)} held-out dates")

    metrics = ft.train()
    after = ft.evaluate(held_out)
    print(f"\nAfter training:  exact match {after['exact_match']:.0%} (before: {before['exact_match']:.0%}); "
          f"eval loss {metrics.get('eval_loss', float('nan')):.3f}; "
          f"train time {metrics['train_runtime']:.0f} s\n")
    pairs = list(zip(before["samples"], after["samples"]))[: args.samples]
    width = max(len(b["prompt"].split(": ", 1)[1]) for b, _ in pairs)
    print(f"{'date':<{width}}  {'expected':<10}  {'before':<28}  after")
    for b, a in pairs:
        shown = b["generated"].replace("\n", " ")
        print(f"{b['prompt'].split(': ', 1)[1]:<{width}}  {b['reference']:<10}  "
              f"{(shown[:25] + '...') if len(shown) > 28 else shown:<28}  {a['generated']}")
    result = {"task": TASK, "held_out": len(held_out), "exact_match_before": before["exact_match"],
              "exact_match_after": after["exact_match"], "metrics": metrics,
              "wall_seconds": round(time.time() - started, 1),
              "samples": [{"prompt": b["prompt"], "expected": b["reference"], "before": b["generated"],
                           "after": a["generated"]} for b, a in zip(before["samples"], after["samples"])]}
    write_json_atomic(f"{args.output_dir}/demo_results.json", result)
    write_report(args.output_dir, ft_record(args.output_dir, result), before, after)
    print(f"\nAdapter, tokenizer, config.yaml, report.html and demo_results.json are in {args.output_dir}/")
    print(f"Reload it with: FineTuner({args.output_dir!r})  or  finetune chat --model_id {args.output_dir}")
    return result


def ft_record(output_dir: str, result: dict) -> dict:
    """The run record train() wrote, with the demo's wall time (for the report's headline)."""
    record = json.loads((Path(output_dir) / RUN_CONFIG_FILE).read_text())
    record["wall_seconds"] = result["wall_seconds"]
    return record


if __name__ == "__main__":
    main()
