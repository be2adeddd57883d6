"""Where a training step spends its time: torch.profiler over optimizer steps of the speed bench's
workload (`bench/speed.py`), for the defaults' adapter (all-linear LoRA, dropout 0.05) and the
bare one (q_proj/v_proj, no dropout), in fp32 and under bf16 autocast, at the same batch;
`all_linear_torch_dropout` is the defaults' adapter with PEFT's `nn.Dropout` kept (what the
package's cheaper CPU mask, `model/dropout.py`, replaces).

    .venv/bin/python bench/profile_step.py                   # 4 settings, 3 profiled steps each
    .venv/bin/python bench/profile_step.py --adapters all_linear --precisions bf16

Per setting: the median step time and the operators with the most self CPU time, grouped into
kinds (matmuls, dtype casts, dropout, attention, loss, optimizer, elementwise, other). Results:
`bench/results/profile_step.{json,md}`. Each setting runs in its own process.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
RESULTS = ROOT / "bench" / "results"
ADAPTERS = {"all_linear": dict(lora_target_modules="all-linear"),  # the defaults' adapter
            # the same with PEFT's own nn.Dropout left in place (the package swaps in LoraDropout)
            "all_linear_torch_dropout": dict(lora_target_modules="all-linear"),
            "qv": dict(lora_target_modules=["q_proj", "v_proj"], lora_dropout=0.0)}
TORCH_DROPOUT = {"all_linear_torch_dropout"}
PRECISIONS = ("fp32", "bf16")
KINDS = [("matmul", ("mm", "addmm", "bmm", "matmul", "linear")),
         ("cast", ("_to_copy", "copy_", "to")),
         ("dropout", ("dropout", "bernoulli", "native_dropout")),  # LoraDropout's draw (random_, ge) falls in "other"
         ("attention", ("scaled_dot_product", "_scaled_dot_product", "_flash", "softmax")),
         ("loss", ("_log_softmax", "log_softmax", "nll_loss", "cross_entropy")),
         ("optimizer", ("_foreach", "adam", "addcdiv", "lerp")),
         ("elementwise", ("mul", "add", "silu", "rsqrt", "pow", "mean", "neg", "cat", "sum", "div",
                          "sub", "exp", "where", "fill", "zero", "clone", "index", "embedding"))]


def kind(op: str) -> str:
    name = op.removeprefix("aten::").lower()
    for label, parts in KINDS:
        if any(name == p or name.startswith(p) for p in parts):
            return label
    return "other"


def profile_one(adapter: str, precision: str, steps: int, warmup: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    from finetuning_suite import DefaultTrainerConfig, FineTuner
    from finetuning_suite.train.machine import cpu_model
    from speed import BATCH, LR, MAX_LENGTH, keep_torch_dropout, workload

    if adapter in TORCH_DROPOUT:
        keep_torch_dropout()

    state = {"times": []}

    class Profiled(TrainerCallback):
        def on_step_begin(self, args, st, control, **kw):
            if st.global_step == warmup:
                state["prof"] = profile(activities=[ProfilerActivity.CPU])
                state["prof"].__enter__()
            state["t0"] = time.perf_counter()

        def on_step_end(self, args, st, control, **kw):
            if st.global_step > warmup:
                state["times"].append(time.perf_counter() - state["t0"])
            if st.global_step == warmup + steps:  # the steps only: not the final save and report
                state["prof"].__exit__(None, None, None)

    class Config(DefaultTrainerConfig):
        def build_trainer(self, **kw):
            trainer = super().build_trainer(**kw)
            trainer.add_callback(Profiled())
            return trainer

    torch.manual_seed(42)
    with tempfile.TemporaryDirectory() as tmp:
        ft = FineTuner(device="cpu", dataset_name=workload(), self_replay=False, retention_probe=False,
                       eval_fraction=0, max_seq_length=MAX_LENGTH, **ADAPTERS[adapter],
                       trainer_config=Config(max_steps=warmup + steps, per_device_train_batch_size=BATCH,
                                             learning_rate=LR, warmup_steps=0, lr_scheduler_type="constant",
                                             logging_steps=1, save_strategy="no", report_to="none",
                                             disable_tqdm=True, seed=42, bf16=precision == "bf16"))
        ft.train(str(Path(tmp) / "run"))
    prof = state["prof"]
    ops = [(e.key, e.self_cpu_time_total / 1e6) for e in prof.key_averages()]
    total = sum(t for _, t in ops) or 1.0
    by_kind: dict[str, float] = {}
    for op, t in ops:
        by_kind[kind(op)] = by_kind.get(kind(op), 0.0) + t
    top = sorted(ops, key=lambda x: -x[1])[:12]
    return {"adapter": adapter, "precision": precision, "batch": BATCH, "profiled_steps": steps,
            "machine": f"{cpu_model() or platform.processor()}, {torch.get_num_threads()} threads",
            "median_step_s": sorted(state["times"])[len(state["times"]) // 2],
            "self_cpu_s": round(total, 3),
            "share_by_kind": {k: round(v / total, 3) for k, v in sorted(by_kind.items(), key=lambda x: -x[1])},
            "top_ops": [{"op": op, "seconds": round(t, 3), "share": round(t / total, 3)} for op, t in top]}


def markdown(results: list[dict]) -> str:
    kinds = [k for k, _ in KINDS] + ["other"]
    lines = ["# Where a training step spends its time", "",
             "`bench/profile_step.py`: the speed bench's 48 rows, the embedded model, batch 8, torch.profiler "
             "over the steps after the first; self CPU time of the operators grouped by kind. Each setting in "
             f"its own process, one run. Machine: {results[0].get('machine', 'not recorded')}.", "",
             "| adapter | precision | median step s | " + " | ".join(kinds) + " |",
             "|---|---|---|" + "---|" * len(kinds)]
    for r in results:
        lines.append(f"| {r['adapter']} | {r['precision']} | {r['median_step_s']:.2f} | "
                     + " | ".join(f"{100 * r['share_by_kind'].get(k, 0):.0f}%" for k in kinds) + " |")
    for r in results:
        lines += ["", f"Top operators, {r['adapter']} / {r['precision']}:", ""]
        lines += [f"- `{o['op']}`: {o['seconds']:.2f} s ({100 * o['share']:.0f}%)" for o in r["top_ops"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adapters", nargs="+", default=list(ADAPTERS), choices=list(ADAPTERS))
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    p.add_argument("--steps", type=int, default=3, help="profiled optimizer steps")
    p.add_argument("--warmup", type=int, default=1, help="steps before profiling starts")
    p.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        Path(args.result).write_text(json.dumps(profile_one(*args.one, args.steps, args.warmup)))
        return 0
    results = []
    for adapter in args.adapters:
        for precision in args.precisions:
            with tempfile.NamedTemporaryFile(suffix=".json") as f:
                cmd = [sys.executable, __file__, "--one", adapter, precision, "--result", f.name,
                       "--steps", str(args.steps), "--warmup", str(args.warmup)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    print(proc.stderr[-2000:])
                    return 1
                results.append(json.loads(Path(f.name).read_text()))
            print(json.dumps({k: results[-1][k] for k in ("adapter", "precision", "median_step_s", "share_by_kind")}),
                  flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "profile_step.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "profile_step.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
