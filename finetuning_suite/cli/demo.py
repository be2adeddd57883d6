"""The main job: fine-tune the embedded SmolLM2-135M-Instruct to rewrite dates in ISO 8601, and
show that it learned (exact match on held-out dates, before and after).

    make run                                   # = .venv/bin/python -m finetuning_suite.demo
    .venv/bin/python -m finetuning_suite.demo --epochs 1 --eval-limit 20 --output-dir runs/x

About 5 minutes on 2 CPU cores. The base model answers "March 5, 2021" with prose or a wrong
date; after one short LoRA run it answers "2021-03-05".
"""
from __future__ import annotations

import argparse
import logging
import time

from ..data.sources import load_source
from ..finetuner import FineTuner
from ..train.runinfo import write_json_atomic
from ..train.trainer_config import DefaultTrainerConfig

TASK = "iso_dates"


def exact_match(ft: FineTuner, rows: list[dict]) -> tuple[float, list[str]]:
    answers = [ft.generate(row["prompt"]) for row in rows]
    hits = sum(answer.strip() == row["completion"] for answer, row in zip(answers, rows))
    return hits / len(rows), answers


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="runs/iso_dates", help="where the adapter and run config go")
    parser.add_argument("--epochs", type=float, default=2.0, help="training epochs (default 2)")
    parser.add_argument("--eval-limit", type=int, default=60, help="held-out prompts to score (default: all 60)")
    parser.add_argument("--samples", type=int, default=6, help="before/after samples to print")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    held_out = list(load_source(TASK)["validation"])[: args.eval_limit]
    print(f"Loading the embedded model; task: {TASK} ({len(held_out)} held-out prompts)")
    ft = FineTuner(dataset_name=TASK, max_length=16,
                   trainer_config=DefaultTrainerConfig(num_train_epochs=args.epochs, logging_steps=10,
                                                       save_strategy="no"))
    started = time.time()
    before, before_answers = exact_match(ft, held_out)
    print(f"Before training: exact match {before:.0%} on {len(held_out)} held-out dates")

    metrics = ft.train(args.output_dir)
    after, after_answers = exact_match(ft, held_out)
    print(f"\nAfter training:  exact match {after:.0%} (before: {before:.0%}); "
          f"eval loss {metrics.get('eval_loss', float('nan')):.3f}; "
          f"train time {metrics['train_runtime']:.0f} s\n")
    width = max(len(r["prompt"].split(": ", 1)[1]) for r in held_out[: args.samples])
    print(f"{'date':<{width}}  {'expected':<10}  {'before':<28}  after")
    for row, b, a in list(zip(held_out, before_answers, after_answers))[: args.samples]:
        b = b.replace("\n", " ")
        print(f"{row['prompt'].split(': ', 1)[1]:<{width}}  {row['completion']:<10}  "
              f"{(b[:25] + '...') if len(b) > 28 else b:<28}  {a}")
    result = {"task": TASK, "held_out": len(held_out), "exact_match_before": before,
              "exact_match_after": after, "metrics": metrics,
              "wall_seconds": round(time.time() - started, 1),
              "samples": [{"prompt": r["prompt"], "expected": r["completion"], "before": b, "after": a}
                          for r, b, a in zip(held_out, before_answers, after_answers)]}
    write_json_atomic(f"{args.output_dir}/demo_results.json", result)
    print(f"\nAdapter, tokenizer, run config and demo_results.json are in {args.output_dir}/")
    print(f"Reload it with: FineTuner({args.output_dir!r})")
    return result


if __name__ == "__main__":
    main()
