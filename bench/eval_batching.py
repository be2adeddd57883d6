"""Batched evaluation generation vs one prompt at a time, on the embedded model (CPU).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/eval_batching.py [--n 32] [--batch-sizes 8 16 32]
        [--threads N] [--tasks iso_dates open_questions] [--out FILE]

Two workloads: `--n` prompts of the built-in iso_dates validation split (max_new_tokens 16,
the evaluation setting of the main job) and `--n` open questions (short factual ones and
open-ended ones, listed below; max_new_tokens 64). "one by one" is `generate_batch([prompt])` per
prompt (what the spec's `generate` runs); "batched" is `generation_metrics` (prompts sorted by length, one
left-padded `generate` call per batch). Both are greedy, so the texts are compared too.
Writes bench/results/eval_batching.json; the write-up is bench/results/eval_batching.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from finetuning_suite import FineTuner  # noqa: E402
from finetuning_suite.data.sources import load_source  # noqa: E402
from finetuning_suite.infer.evaluate import generation_metrics, reference_rows  # noqa: E402

OPEN_QUESTIONS = [  # answers run from one sentence to well past 64 tokens
    "What is the capital of France?", "Who wrote Romeo and Juliet?",
    "How many legs does a spider have?", "What gas do plants absorb from the air?",
    "Which planet is known as the Red Planet?", "What is the largest ocean on Earth?",
    "What is the boiling point of water in degrees Celsius?", "Who painted the Mona Lisa?",
    "Explain how a rainbow forms.", "Why do we have seasons on Earth?",
    "Describe a good way to learn a new language.", "What makes a cup of tea taste good?",
    "Give some tips for sleeping better.", "How does a bicycle stay upright?",
    "Why is exercise good for your health?", "Describe the water cycle.",
    "What should I pack for a weekend hiking trip?", "How do plants make their food?",
    "Explain what a computer program is to a child.", "Why do leaves change colour in autumn?",
    "What are the benefits of reading books?", "How can I save money on groceries?",
    "Describe how bread is made.", "Why is the ocean salty?",
    "What is the difference between weather and climate?", "How do vaccines work?",
    "Why do cats purr?", "What is a good way to start a short story?",
    "How does a refrigerator keep food cold?", "What are some ways to reduce stress?",
    "Why is the sky blue?", "How do bees make honey?",
]


def machine() -> dict:
    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                    if line.startswith("model name")), cpu)
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "dtype": "float32"}


def one_by_one(ft, rows, max_new):
    handler = ft.inference_handler
    start, cpu = time.perf_counter(), time.process_time()
    outs = [handler.generate_batch([r["prompt"]], ft.model, ft.tokenizer, "cpu", max_new)[0] for r in rows]
    return time.perf_counter() - start, time.process_time() - cpu, outs


def run(ft, name, rows, max_new, batch_sizes, results):
    print(f"\n== {name}: {len(rows)} prompts, max_new_tokens={max_new}", flush=True)
    seconds, cpu, singles = one_by_one(ft, rows, max_new)
    tokens = sum(g.new_tokens for g in singles)
    entry = {"prompts": len(rows), "max_new_tokens": max_new,
             "one_by_one": {"seconds": seconds, "cpu_seconds": cpu, "new_tokens": tokens,
                            "tokens_per_s": tokens / seconds, "loadavg_1min": os.getloadavg()[0],
                            "eos_rate": sum(g.finished_with_eos for g in singles) / len(rows)},
             "batched": {}}
    print(f"one by one: {seconds:.1f} s (cpu {cpu:.1f} s), {tokens} new tokens, "
          f"{tokens / seconds:.1f} tok/s", flush=True)
    for bs in batch_sizes:
        cpu_start = time.process_time()
        m = generation_metrics(ft.inference_handler, rows, ft.model, ft.tokenizer, "cpu",
                               max_new_tokens=max_new, batch_size=bs)
        b_cpu = time.process_time() - cpu_start
        same = sum(s["generated"] == g.text for s, g in zip(m["samples"], singles))
        entry["batched"][bs] = {"seconds": m["seconds"], "cpu_seconds": b_cpu,
                                "speedup": seconds / m["seconds"], "cpu_speedup": cpu / b_cpu,
                                "same_text": same, "eos_rate": m["eos_rate"],
                                "exact_match": m["exact_match"], "loadavg_1min": os.getloadavg()[0]}
        print(f"batch {bs:>3}: {m['seconds']:.1f} s (cpu {b_cpu:.1f} s), x{seconds / m['seconds']:.2f} "
              f"wall, x{cpu / b_cpu:.2f} cpu, same text {same}/{len(rows)}", flush=True)
    results[name] = entry


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's own choice)")
    parser.add_argument("--tasks", nargs="+", default=["iso_dates", "open_questions"],
                        choices=["iso_dates", "open_questions"])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "eval_batching.json"))
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    ft = FineTuner(device="cpu")
    iso = load_source("iso_dates")["validation"]
    iso_rows = reference_rows(iso, "prompt_completion", True)[: args.n]
    open_rows = [{"prompt": q, "reference": ""} for q in OPEN_QUESTIONS][: args.n]
    ft.generate("Hi", max_length=4)  # warm-up
    results = {"machine": machine(), "loadavg_before": load_before}
    if "iso_dates" in args.tasks:
        run(ft, "iso_dates", iso_rows, 16, args.batch_sizes, results)
    if "open_questions" in args.tasks:
        run(ft, "open_questions", open_rows, 64, args.batch_sizes, results)
    results["loadavg_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
