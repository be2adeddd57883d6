"""Packing, measured: the embedded model trained on mixed-length rows, padded against packed.

    .venv/bin/python bench/packing.py                        # 3 alternated rounds, 4 steps each
    .venv/bin/python bench/packing.py --repeats 1 --steps 2 --threads 1

The workload is the speed bench's (`bench/speed.py: workload()`): 48 prompt/completion rows of
~20-460 tokens, completion-only loss, the embedded SmolLM2-135M-Instruct on the CPU, the bare
adapter (LoRA r=16 on q_proj/v_proj, no dropout), no self-replay, no retention probe, batch 8,
constant learning rate 1e-3, `--steps` optimizer steps, the same seed and data order for both.

- `padded`: the package's default collation (dynamic padding to the longest row of the batch).
- `packed`: `packing=True`: each batch one row without padding, `packed_sdpa` attention.

Each run is its own process; the rounds alternate them (padded, packed, padded, ...) so a slow
spell of the machine hits both alike; medians and spread (lowest-highest). Reported: labelled
tokens (completion tokens predicted) per second of the optimizer steps and of the whole
`train()` call, tokens fed against real tokens, and the per-step losses, which must be the same
packed and padded (the same is learned). Results: `bench/results/packing.{json,md}`.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402  (the shared workload, counters and machine description)

RESULTS = speed.RESULTS
CONFIGS = ["padded", "packed"]
STEPS = 4


def run_config(name: str, out: str, steps: int) -> dict:
    """Train configuration `name` once; what it measured."""
    import torch

    from finetuning_suite import DefaultTrainerConfig, FineTuner
    from finetuning_suite.train.loss import uses_labelled_loss

    torch.manual_seed(42)
    timer, state = speed.step_timer(), {}

    class Measured(DefaultTrainerConfig):
        def build_trainer(self, **kw):
            trainer = super().build_trainer(**kw)
            state["counter"] = speed.Counting(trainer.data_collator)
            trainer.data_collator = state["counter"]
            trainer.add_callback(timer)
            state["trainer"] = trainer
            return trainer

    settings = {**speed._bare_args(out), "max_steps": steps}
    ft = FineTuner(device="cpu", dataset_name=speed.workload(), self_replay=False, retention_probe=False,
                   trainer_config=Measured(packing=name == "packed", **settings),
                   lora_target_modules=speed.QV["target_modules"], lora_dropout=0.0,
                   max_seq_length=speed.MAX_LENGTH, eval_fraction=0)
    started = time.perf_counter()
    ft.train(out)
    wall = time.perf_counter() - started
    trainer = state["trainer"]
    result = speed.summarize(name, ft.model, trainer, state["counter"], timer, wall,
                             head_everywhere=not uses_labelled_loss(trainer))
    result["labelled_tokens_per_step_s"] = round(result["tokens"]["labelled"] / result["training_seconds"], 2)
    result["losses"] = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="alternated rounds (median and spread)")
    p.add_argument("--steps", type=int, default=STEPS, help="optimizer steps per run")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--timeout", type=int, default=900, help="seconds per run before it is stopped")
    p.add_argument("--note", default="", help="conditions to record (e.g. other work on the machine)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(RESULTS / "packing"), help="results path without extension")
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:  # a child: one configuration
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            result = run_config(args.one, tmp, args.steps)
        Path(args.result).write_text(json.dumps(result))
        return

    runs: list[dict] = []
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    for round_ in range(args.repeats):
        for name in CONFIGS:
            result_file = Path(args.out + f".{name}.tmp.json")
            cmd = [sys.executable, __file__, "--one", name, "--result", str(result_file),
                   "--steps", str(args.steps)] + (["--threads", str(args.threads)] if args.threads else [])
            load_before = os.getloadavg()[0]
            try:
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
                ok = proc.returncode == 0 and result_file.exists()
                result = json.loads(result_file.read_text()) if ok else {
                    "config": name, "error": (proc.stderr or "")[-1500:]}
            except subprocess.TimeoutExpired:
                result = {"config": name, "error": f"did not finish in {args.timeout} s"}
            result_file.unlink(missing_ok=True)
            result["round"] = round_ + 1
            result["load_avg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
            runs.append(result)
            print(json.dumps({k: v for k, v in result.items() if k not in ("error",)}), flush=True)
            if "error" in result:
                print("  error:", result["error"][-400:], flush=True)
    report = {"machine": speed.machine(), "note": args.note, "steps": args.steps, "batch": speed.BATCH,
              "examples": speed.N_EXAMPLES, "adapter": speed.QV, "learning_rate": speed.LR,
              "max_length": speed.MAX_LENGTH, "repeats": args.repeats,
              "created": time.strftime("%Y-%m-%d %H:%M"), "runs": runs, "summary": summary(runs)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(report, indent=2) + "\n")
    Path(args.out + ".md").write_text(markdown(report))
    print(f"wrote {args.out}.json and {args.out}.md")


def summary(runs: list[dict]) -> dict:
    """Per configuration: median and spread of its rounds; packed over padded; the largest
    difference between the two's losses at the same step."""
    rows = {}
    for name in CONFIGS:
        good = [r for r in runs if r["config"] == name and "error" not in r]
        row = {"runs": len(good), "failed": sum(r["config"] == name and "error" in r for r in runs)}
        for key in ("labelled_tokens_per_s", "labelled_tokens_per_step_s", "seconds_per_step",
                    "wall_seconds", "peak_rss_mb"):
            values = [r[key] for r in good if r.get(key) is not None]
            if values:
                row[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        if good:
            row["tokens"] = good[0]["tokens"]
            row["losses"] = good[0]["losses"]
        rows[name] = row
    out = {"configs": rows}
    a, b = rows["padded"], rows["packed"]
    for key in ("labelled_tokens_per_s", "labelled_tokens_per_step_s"):
        if key in a and key in b:
            out[f"packed_vs_padded_{key}"] = round(b[key]["median"] / a[key]["median"], 2)
    if a.get("losses") and b.get("losses"):
        out["max_loss_difference"] = max(abs(x - y) for x, y in zip(a["losses"], b["losses"]))
    return out


def _cell(stat: dict | None, fmt: str) -> str:
    return f"{stat['median']:{fmt}} ({stat['min']:{fmt}}-{stat['max']:{fmt}})" if stat else ""


def markdown(report: dict) -> str:
    m, s = report["machine"], report["summary"]
    lines = [f"# Packing: padded against packed ({report['created']})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} with {m['threads']} "
             f"thread{'s' if m['threads'] != 1 else ''}. "
             + (f"Conditions: {report['note']} " if report["note"] else "")
             + "Command: `bench/packing.py` (what runs is in its docstring).",
             f"Workload: {report['examples']} prompt/completion rows (~20-460 tokens) of `bench/speed.py`, "
             f"completion-only loss, the embedded model, LoRA r=16 on q/v without dropout, batch "
             f"{report['batch']}, {report['steps']} optimizer steps, no self-replay. {report['repeats']} "
             "rounds, configurations alternated, each run its own process; median (lowest-highest).", "",
             "| configuration | labelled tok/s (optimizer steps) | labelled tok/s (whole train call) | s/step "
             "| tokens fed / real | peak RSS MB |", "|---|---|---|---|---|---|"]
    for name in CONFIGS:
        row = s["configs"][name]
        if not row["runs"]:
            lines.append(f"| {name} | failed | | | | |")
            continue
        t = row["tokens"]
        lines.append(f"| {name} | {_cell(row.get('labelled_tokens_per_step_s'), '.1f')} | "
                     f"{_cell(row.get('labelled_tokens_per_s'), '.1f')} | {_cell(row.get('seconds_per_step'), '.2f')} | "
                     f"{t['padded']:,} / {t['tokens']:,} | {_cell(row.get('peak_rss_mb'), '.0f')} |")
    lines += ["", f"Packed over padded (medians): {s.get('packed_vs_padded_labelled_tokens_per_step_s', '?')}x "
              f"per second of the optimizer steps, {s.get('packed_vs_padded_labelled_tokens_per_s', '?')}x "
              "over the whole `train()` call (set-up, the run's saving and report included).",
              f"Same learning: the largest difference between the padded and the packed run's loss at "
              f"the same step is {s.get('max_loss_difference', float('nan')):.2g} (losses padded "
              f"{[round(x, 4) for x in s['configs']['padded'].get('losses', [])]}, packed "
              f"{[round(x, 4) for x in s['configs']['packed'].get('losses', [])]}).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
