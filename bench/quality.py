"""Quality benchmark: do the *default* settings learn a task and keep what the model knew?

    make quality                                   # every task x every method (~40-60 min on 2 cores)
    .venv/bin/python bench/quality.py --tasks facts --methods lora qlora

For each built-in quality task (`facts`: made-up facts asked in reworded held-out questions;
`extract_fields`: a strict output format; `snake_case`: a text transformation) and each method
(LoRA, QLoRA, full fine-tuning), with nothing but `FineTuner(dataset_name=task, method=...)`
and `train()`: held-out exact match, chrF and EOS rate before and after, how many of the
general questions in `builtin/general.jsonl` the model still answers right, and wall times.
Results are merged into `bench/results/quality.json` (one entry per task and method, so runs
can be split) and the table is rewritten into `bench/results/quality.md`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = Path(__file__).resolve().parent / "results"
TASKS = ("facts", "extract_fields", "snake_case", "facts12")
ROOT = Path(__file__).resolve().parent.parent
# The issue-17 case: a dozen made-up facts as the user's own prompt/completion file, 10 epochs.
FACTS12 = ROOT / "tests" / "docs_fixtures" / "facts.jsonl"
FACTS12_EPOCHS = 10
from finetuning_suite.config import METHODS  # noqa: E402
GENERAL_MAX_TOKENS = 48


def general_questions() -> list[dict]:
    from finetuning_suite.data.sources import BUILTIN_DIR

    path = BUILTIN_DIR / "general.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def general_kept(ft, questions: list[dict]) -> dict:
    """How many general questions the model answers with the expected word (greedy, batched)."""
    outs = ft.inference_handler.generate_batch([q["prompt"] for q in questions], ft.model,
                                               ft.tokenizer, ft.device, GENERAL_MAX_TOKENS)
    right = [q["expected"].lower() in g.text.lower() for q, g in zip(questions, outs)]
    return {"right": sum(right), "of": len(questions),
            "answers": [{"prompt": q["prompt"], "expected": q["expected"], "answer": g.text}
                        for q, g in zip(questions, outs)]}


def score(metrics: dict) -> dict:
    return {k: metrics.get(k) for k in ("exact_match", "chrf", "eos_rate", "loss", "n", "seconds")}


def kept_cell(r: dict) -> str:
    t = r.get("retention_test")
    if not t:
        return "-"
    share = f" ({100 * t['kept'] / t['base_right']:.0f}%)" if t["base_right"] else ""
    return f"{t['kept']}/{t['base_right']}{share}"


def facts12_success(ft) -> dict:
    """The facts12 case has no held-out split: success is the 12 trained answers given back."""
    rows = [json.loads(line) for line in FACTS12.read_text().splitlines() if line.strip()]
    replies = [ft.generate(r["prompt"], 16) for r in rows]
    right = sum(r["completion"].lower() in reply.lower() for r, reply in zip(rows, replies))
    return {"exact_match": right / len(rows), "chrf": None, "eos_rate": None, "n": len(rows),
            "samples": [{"prompt": r["prompt"], "expected": r["completion"], "generated": reply}
                        for r, reply in zip(rows, replies)]}


def run_one(task: str, method: str, questions: list[dict], extra: dict | None = None) -> dict:
    from finetuning_suite import FineTuner
    from finetuning_suite.infer.retention import answer, load_items, retention

    started = time.time()
    facts12 = task == "facts12"
    ft = FineTuner(device="cpu", dataset_name=str(FACTS12) if facts12 else task, method=method,
                   max_length=64, **(extra or {}))
    before = facts12_success(ft) if facts12 else ft.evaluate()
    kept_before = general_kept(ft, questions)
    test_items = load_items("test")   # the frozen half: reported here, never tuned on
    test_before = answer(test_items, ft.model, ft.tokenizer, ft.device, ft.chat_format)
    out = Path(tempfile.mkdtemp(prefix=f"quality-{task}-{method}-"))
    try:
        t0 = time.time()
        metrics = ft.train(str(out / "run"), FACTS12_EPOCHS if facts12 else None)
        train_s = time.time() - t0
        record = json.loads((out / "run" / "finetuner_config.json").read_text())
    finally:
        shutil.rmtree(out, ignore_errors=True)
    after = facts12_success(ft) if facts12 else ft.evaluate()
    kept_after = general_kept(ft, questions)
    kept_test = retention(test_items, test_before, answer(test_items, ft.model, ft.tokenizer, ft.device,
                                                          ft.chat_format))
    return {
        "retention_test": {"base_right": kept_test.base_right, "kept": kept_test.kept,
                           "asked": kept_test.asked, "gained": kept_test.gained,
                           "lost": [x["prompt"] for x in kept_test.lost]},
        "retention_probe": metrics.get("retention"),
        "trainer_seconds": round(metrics["train_runtime"], 1),
        "task": task, "method": method,
        "before": score(before), "after": score(after),
        "general_before": kept_before["right"], "general_after": kept_after["right"],
        "general_of": kept_after["of"],
        "general_lost": [a for a, b in zip(kept_after["answers"], kept_before["answers"])
                         if a["expected"].lower() not in a["answer"].lower()
                         and b["expected"].lower() in b["answer"].lower()],
        "chosen_defaults": record.get("chosen_defaults"), "precision": record.get("precision"),
        "settings": extra or {},
        "train_steps": round(metrics["train_steps_per_second"] * metrics["train_runtime"]),
        "train_loss": metrics.get("train_loss"),
        "train_seconds": round(train_s, 1), "wall_seconds": round(time.time() - started, 1),
        "samples_after": after["samples"][:5],
    }


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from finetuning_suite.train.runinfo import library_versions

    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": "cpu", "dtype": "float32", "versions": library_versions()}


def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def targets(runs: dict) -> list[str]:
    """One line per target: which runs meet it (>= 95% held-out, QLoRA within 3 points of LoRA,
    >= 99% EOS, no general answer lost, <= 5 minutes of training)."""
    def misses(check):
        bad = [key for key, r in runs.items() if not check(r)]
        return "all met" if not bad else "missed by " + ", ".join(bad)

    def kept95(r):
        t = r.get("retention_test")
        return bool(t) and (not t["base_right"] or t["kept"] >= 0.95 * t["base_right"])

    def qlora_close(r):
        lora = runs.get(f"{r['task']}/lora")
        return r["method"] != "qlora" or lora is None or \
            r["after"]["exact_match"] >= lora["after"]["exact_match"] - 0.03
    return [f"- held-out >= 95%: {misses(lambda r: r['after']['exact_match'] >= 0.95)}",
            f"- QLoRA within 3 points of LoRA: {misses(qlora_close)}",
            f"- EOS >= 99%: {misses(lambda r: r['after']['eos_rate'] is None or r['after']['eos_rate'] >= 0.99)}",
            f"- retention >= 95% of base-right test items: {misses(kept95)}",
            f"- no general (smoke) answer lost: {misses(lambda r: not r['general_lost'])}",
            f"- training <= 300 s: {misses(lambda r: r.get('trainer_seconds', r['train_seconds']) <= 300)}"]


def write_markdown(data: dict) -> None:
    from finetuning_suite.train.precision import short_label

    m = data["machine"]
    lines = ["# Quality benchmark: default settings, three methods", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads; "
             f"torch {m['versions'].get('torch')}, transformers {m['versions'].get('transformers')}, "
             f"peft {m['versions'].get('peft')}. Model: the embedded SmolLM2-135M-Instruct. "
             "Command: `make quality`.", "",
             "Every run is `FineTuner(dataset_name=task, method=method, max_length=64).train()` with "
             "the defaults; held-out = exact match on the task's validation split (reworded questions "
             "for `facts`); EOS = share of held-out answers that ended with EOS; general = the "
             "questions of `builtin/general.jsonl` answered right (the expected word in a greedy "
             "48-token answer) before and after training; lost = answered right before, wrong after. "
             "QLoRA's *before* is the 4-bit base, which already gets some of them wrong.", "",
             *([data["note"], ""] if data.get("note") else []),
             "Retention (test) = of the frozen test half of `data/retention` (133 general prompts with "
             "checkers, never tuned on), the items the model answered right before training that it "
             "still answers right after; the run's own probe (40 dev items) is listed beside it. "
             "`facts12` is a dozen made-up facts (`tests/docs_fixtures/facts.jsonl`) trained for 10 "
             "epochs; its held-out column is the 12 trained answers given back. train s = the "
             "Trainer's own runtime; wall s = the whole run with evaluation and probes. precision = what "
             "the run trained in and whether it was chosen automatically (`train/precision.py`) or "
             "given (`--bf16 false`).", "",
             "| task | method | precision | held-out before | held-out after | chrF after | EOS after | retention (test) | probe (dev) | general right before → after | train s | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(data["runs"].values(), key=lambda r: (TASKS.index(r["task"]) if r["task"] in TASKS else 9,
                                                            METHODS.index(r["method"]))):
        lines.append(f"| {r['task']} | {r['method']} | {short_label(r.get('precision'))} | {pct(r['before']['exact_match'])} | "
                     f"{pct(r['after']['exact_match'])} | "
                     f"{'-' if r['after']['chrf'] is None else format(r['after']['chrf'], '.1f')} | "
                     f"{pct(r['after']['eos_rate'])} | {kept_cell(r)} | "
                     f"{(r.get('retention_probe') or {}).get('kept', '-')}/{(r.get('retention_probe') or {}).get('base_right', '-')} | "
                     f"{r['general_before']} → {r['general_after']} of {r['general_of']} | "
                     f"{r.get('trainer_seconds', r['train_seconds']):.0f} | {r['wall_seconds']:.0f} |")
    lines += ["", "Targets, per run (computed from the table):", ""] + targets(data["runs"])
    lost = [(r["task"], r["method"], x) for r in data["runs"].values() for x in r["general_lost"]]
    if lost:
        lines += ["", "General answers lost:", ""]
        lines += [f"- {t}/{m}: {x['prompt']} → {x['answer'][:80]!r} (expected {x['expected']})"
                  for t, m, x in lost]
    lines += ["", "Defaults chosen by `train/defaults.py` for each run:", ""]
    for key, r in data["runs"].items():
        if r.get("chosen_defaults"):
            lines.append(f"- {key}: {r['chosen_defaults'].get('rule')}")
    (RESULTS / "quality.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--note", default=None, help="a line about the conditions, kept in the results")
    parser.add_argument("--bf16", choices=("auto", "false"), default="auto",
                        help="false: train in fp32 (rows kept as task/method/fp32), to compare with "
                             "the automatic choice")
    parser.add_argument("--markdown-only", action="store_true",
                        help="only rewrite quality.md from quality.json (no runs)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "quality.json"
    data = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    if args.note:
        data["note"] = args.note
    if args.markdown_only:
        write_markdown(data)
        return 0
    questions = general_questions()
    for task in args.tasks:
        for method in args.methods:
            print(f"== {task} / {method}", flush=True)
            extra = {"bf16": False} if args.bf16 == "false" else {}
            result = run_one(task, method, questions, extra)
            print(json.dumps({k: result[k] for k in ("before", "after", "general_after", "train_seconds")}),
                  flush=True)
            data["runs"][f"{task}/{method}" + ("/fp32" if extra else "")] = result
            data["machine"] = machine()
            path.write_text(json.dumps(data, indent=2) + "\n")
            write_markdown(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
