"""Training speed, side by side: ours against the pipelines a user could pick instead.

    make bench                                   # every configuration, 3 alternated rounds
    .venv/bin/python bench/speed.py --configs ours_defaults hf_trainer_qv --repeats 1

One workload for all (`workload()`): 48 instruction rows from a fixed seed, prompt + completion
from ~20 to ~460 tokens, loss on the completion only, on the embedded SmolLM2-135M-Instruct, on
the CPU. Each configuration runs in its own process (so peak RSS is its own); the rounds
alternate them (A B C, A B C, ...), so a slow spell of the machine hits every configuration
alike; the tables give the median of the rounds and the spread (lowest-highest).

Configurations, named for exactly what runs:

- `ours_defaults`: `FineTuner(dataset_name=rows).train()` and nothing else: every default of the
  package (all-linear LoRA with dropout 0.05, self-replay and the retention probe, their base
  answers cached after a first run, epochs, batch, learning rate and schedule from the data,
  the precision chosen for the machine (`train/precision.py`), the eval split, the final save
  and report).
- `ours_defaults_fp32`: the same with `bf16=False`: what the automatic precision changes.
- `ours_all_linear_b8`: the defaults' adapter (all-linear, dropout 0.05) without self-replay,
  at batch 8 for `--steps` steps, fp32 (`bf16=False`): what the adapter itself costs.
- `ours_all_linear_b8_torch_dropout`: the same with PEFT's own `nn.Dropout` left in place of the
  package's `LoraDropout` (`model/dropout.py`, the same mask drawn more cheaply on a CPU).
- `ours_qv`, `ours_qv_bf16`: `FineTuner` with the bare adapter (LoRA r=16/alpha=32 on q_proj and
  v_proj, no dropout), no self-replay, no retention probe, batch 8, constant learning rate 1e-3,
  no warm-up, `--steps` steps; the first with `bf16=False` (fp32), the second with `bf16=True`
  (bf16 autocast, fp32 master weights).
- `ours_qlora_qv`: the same adapter on the 4-bit NF4 base (`quantize=True`), `bf16=False`
  (the 4-bit layers compute in bf16 all the same, the quantization's compute dtype).
- `hf_trainer_qv`, `hf_trainer_qv_bf16`: plain transformers `Trainer` + PEFT with the same
  adapter and settings, dynamic padding (`DataCollatorForSeq2Seq`), the Trainer's own loss.
- `seed_padded_qv`: the original attempt's pipeline: every example padded to 512 tokens.
- `trl_sft_defaults_qv`: TRL's `SFTTrainer` with its own defaults (bf16, gradient checkpointing)
  and the same adapter, batch and steps.

Reported per configuration: labelled tokens trained per second of the whole `train()` call
(tokens that carry a label, i.e. completion tokens predicted, over the wall time of the call,
set-up and saving included), seconds per optimizer step, MFU by the package's one definition
(`train/meter.py: useful_flops / mfu`, against the matmul peak probed for the precision the run
computes in), peak RSS. Results: `bench/results/speed.{json,md}`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CONFIGS = ["ours_defaults", "ours_defaults_fp32", "ours_all_linear_b8", "ours_all_linear_b8_torch_dropout",
           "ours_qv", "ours_qv_bf16", "ours_qlora_qv", "hf_trainer_qv", "hf_trainer_qv_bf16", "seed_padded_qv", "trl_sft_defaults_qv"]
BATCH, LR, MAX_LENGTH, N_EXAMPLES, STEPS = 8, 1e-3, 512, 48, 6
QV = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])

WORDS = ("river light stone market winter garden letter engine silver north window paper "
         "orange music harbor forest bridge number yellow animal summer travel coffee doctor "
         "island mirror planet rocket school season spring theatre tunnel valley village wheel "
         "basket candle castle circle cotton dinner family finger flower friend ground hammer "
         "jacket kettle ladder meadow pencil pepper pillow pocket puzzle rabbit saddle shadow "
         "signal sister spider table ticket tomato travel turtle velvet wagon whistle").split()


def workload(seed: int = 0, n: int = N_EXAMPLES) -> list[dict]:
    """`n` prompt/completion rows, total length spread from ~20 to ~460 tokens: a task (sort,
    reverse or count a list of words) over a list whose length is drawn per example."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        k = int(4 + (rng.random() ** 1.5) * 140)  # many short, some long
        items = [rng.choice(WORDS) for _ in range(k)]
        task = i % 3
        if task == 0:
            prompt, completion = f"Sort these words alphabetically: {' '.join(items)}", " ".join(sorted(items))
        elif task == 1:
            prompt, completion = f"Write these words in reverse order: {' '.join(items)}", " ".join(reversed(items))
        else:
            keep = items[: max(2, k // 3)]
            prompt = f"List the distinct words, in first-seen order: {' '.join(keep)}"
            completion = ", ".join(dict.fromkeys(keep))
        rows.append({"prompt": prompt, "completion": completion})
    return rows


# -- measurement, inside each configuration's process ------------------------------------------
class Counting:
    """Wraps a data collator: counts padded, real and labelled tokens of every batch, and the
    sum of squared example lengths (attention's cost)."""

    def __init__(self, collate):
        self.collate, self.batches = collate, []

    def __call__(self, features):
        batch = self.collate(features)
        ids, labels = batch["input_ids"], batch.get("labels")
        mask = batch.get("attention_mask")
        if mask is not None:
            lengths = mask.sum(dim=1).tolist()
        elif "position_ids" in batch:  # padding-free: one row of packed examples
            pos = batch["position_ids"].flatten().tolist()
            starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
            lengths = [b - a for a, b in zip(starts, starts[1:])]
        else:
            lengths = [ids.shape[1]] * ids.shape[0]
        labelled = int((labels[:, 1:] != -100).sum()) if labels is not None else 0
        self.batches.append({"padded": int(ids.numel()), "tokens": int(sum(lengths)),
                             "labelled": labelled, "sum_sq": int(sum(n * n for n in lengths))})
        return batch


def step_timer():
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def __init__(self):
            self.starts, self.ends = [], []

        def on_step_begin(self, args, state, control, **kw):
            self.starts.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            self.ends.append(time.perf_counter())
    return Timer()


def _bare_args(out: str, **extra):
    return dict(output_dir=out, max_steps=STEPS, per_device_train_batch_size=BATCH, learning_rate=LR,
                warmup_steps=0, lr_scheduler_type="constant", logging_steps=1, save_strategy="no",
                report_to="none", disable_tqdm=True, seed=42, dataloader_num_workers=0, **extra)


def _tokenize_hf(tokenizer, rows, pad_to: int | None):
    """Prompt + completion + EOS, labels -100 on the prompt (completion-only loss), no chat
    template (as a plain HF user writes it); padded to `pad_to` when given (seed-style)."""
    import datasets

    out = []
    for r in rows:
        p = tokenizer(r["prompt"] + "\n")["input_ids"]
        c = tokenizer(r["completion"])["input_ids"] + [tokenizer.eos_token_id]
        ids, labels = (p + c)[:MAX_LENGTH], ([-100] * len(p) + c)[:MAX_LENGTH]
        row = {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}
        if pad_to:
            n = pad_to - len(ids)
            row = {"input_ids": ids + [tokenizer.pad_token_id] * n, "attention_mask": [1] * len(ids) + [0] * n,
                   "labels": labels + [-100] * n}
        out.append(row)
    return datasets.Dataset.from_list(out)


def _peft_model():
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetuning_suite.model.embedded import embedded_model_dir

    path = str(embedded_model_dir())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    torch.manual_seed(42)
    return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **QV)), tok


def keep_torch_dropout() -> None:
    """For this process: LoRA layers keep PEFT's `nn.Dropout` (the package would swap in its
    `LoraDropout`, `model/dropout.py`): the A/B rows that price that swap."""
    from finetuning_suite.model import methods

    methods.use_fast_dropout = lambda model: None


def run_config(name: str, out: str) -> dict:
    """Train configuration `name` once; what it measured."""
    import torch

    from finetuning_suite.train.loss import uses_labelled_loss

    torch.manual_seed(42)
    rows = workload()
    timer = step_timer()
    state = {}

    if name.startswith("ours"):
        from finetuning_suite import DefaultTrainerConfig, FineTuner

        class Measured(DefaultTrainerConfig):
            def build_trainer(self, **kw):
                trainer = super().build_trainer(**kw)
                state["counter"] = Counting(trainer.data_collator)
                trainer.data_collator = state["counter"]
                trainer.add_callback(timer)
                state["trainer"] = trainer
                return trainer

        if name.startswith("ours_defaults"):
            config = Measured(bf16=False) if name == "ours_defaults_fp32" else Measured()
            ft = FineTuner(device="cpu", dataset_name=rows, trainer_config=config)
        else:
            settings = _bare_args(out, bf16=name.endswith("_bf16"))
            if name.endswith("_torch_dropout"):
                keep_torch_dropout()
            adapter = (dict(lora_target_modules="all-linear") if name.startswith("ours_all_linear_b8") else
                       dict(lora_target_modules=QV["target_modules"], lora_dropout=0.0))
            ft = FineTuner(device="cpu", dataset_name=rows, self_replay=False, retention_probe=False, trainer_config=Measured(**settings),
                           quantize=name == "ours_qlora_qv", max_seq_length=MAX_LENGTH, eval_fraction=0,
                           **adapter)
        model = ft.model
        started = time.perf_counter()
        ft.train(out)
        wall = time.perf_counter() - started
        trainer = state["trainer"]
    else:
        from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

        model, tok = _peft_model()
        if name.startswith("trl"):
            import datasets
            from trl import SFTConfig, SFTTrainer

            trainer = SFTTrainer(model=model, args=SFTConfig(**_bare_args(out, max_length=MAX_LENGTH, use_cpu=True)),
                                 train_dataset=datasets.Dataset.from_list(rows), processing_class=tok,
                                 callbacks=[timer])
            state["counter"] = Counting(trainer.data_collator)
            trainer.data_collator = state["counter"]
        else:
            data = _tokenize_hf(tok, rows, MAX_LENGTH if name == "seed_padded_qv" else None)
            state["counter"] = Counting(DataCollatorForSeq2Seq(tok, label_pad_token_id=-100))
            extra = {"bf16": True} if name == "hf_trainer_qv_bf16" else {}
            trainer = Trainer(model=model, args=TrainingArguments(**_bare_args(out, use_cpu=True, **extra)),
                              train_dataset=data, data_collator=state["counter"], callbacks=[timer])
        started = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - started
    return summarize(name, model, trainer, state["counter"], timer, wall,
                     head_everywhere=not uses_labelled_loss(trainer))


def summarize(name, model, trainer, counter, timer, wall, *, head_everywhere: bool) -> dict:
    from finetuning_suite.train.meter import compute_dtype, flop_shape, useful_flops

    sums = {k: sum(b[k] for b in counter.batches) for k in ("padded", "tokens", "labelled", "sum_sq")}
    steps = [e - s for s, e in zip(timer.starts, timer.ends)]
    flops = useful_flops(flop_shape(model), tokens=sums["tokens"], labelled=sums["labelled"],
                         sum_sq=sums["sum_sq"], head_everywhere=head_everywhere)
    return {"config": name, "steps": len(steps), "wall_seconds": round(wall, 2),
            "seconds_per_step": round(statistics.median(steps), 3) if steps else None,
            "training_seconds": round(sum(steps), 2),
            "labelled_tokens_per_s": round(sums["labelled"] / wall, 2),
            "useful_flops_per_s": flops / sum(steps) if steps else None,
            "compute_dtype": str(compute_dtype(model, trainer.args)).removeprefix("torch."),
            "head_everywhere": head_everywhere, "tokens": sums,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


# -- the driver ----------------------------------------------------------------------------------
def machine() -> dict:
    import torch

    from finetuning_suite.train.machine import cpu_flags, cpu_model
    from finetuning_suite.train.precision import CPU_BF16_FLAGS

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "bf16_instructions": [f for f in CPU_BF16_FLAGS if f in cpu_flags()],
            "torch": torch.__version__, "python": platform.python_version()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=CONFIGS, choices=CONFIGS)
    p.add_argument("--repeats", type=int, default=3, help="alternated rounds (median and spread)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per run before it is stopped")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(RESULTS / "speed"), help="results path without extension")
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:  # a child: one configuration
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            result = run_config(args.one, tmp)
        Path(args.result).write_text(json.dumps(result))
        return

    from finetuning_suite.train.meter import measure_matmul_peak

    peaks = {str(dtype).removeprefix("torch."): measure_matmul_peak(dtype, "cpu", seconds=3.0)
             for dtype in (torch.float32, torch.bfloat16)}
    print("matmul peaks (GFLOP/s):", {k: round(v / 1e9, 1) for k, v in peaks.items()}, flush=True)
    runs: list[dict] = []
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    for round_ in range(args.repeats):
        for name in args.configs:
            result_file = Path(args.out + f".{name}.tmp.json")
            cmd = [sys.executable, __file__, "--one", name, "--result", str(result_file)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
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
            if result.get("useful_flops_per_s"):
                result["mfu"] = round(result["useful_flops_per_s"] / peaks[result["compute_dtype"]], 4)
            runs.append(result)
            print(json.dumps({k: v for k, v in result.items() if k not in ("tokens", "error")}), flush=True)
            if "error" in result:
                print("  error:", result["error"][-400:], flush=True)
    report = {"machine": machine(), "matmul_peak_flops": peaks, "steps": STEPS, "batch": BATCH,
              "examples": N_EXAMPLES, "adapter_qv": QV, "learning_rate": LR, "max_length": MAX_LENGTH,
              "repeats": args.repeats, "created": time.strftime("%Y-%m-%d %H:%M"), "runs": runs,
              "summary": summary(runs, args.configs)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(report, indent=2) + "\n")
    Path(args.out + ".md").write_text(markdown(report))
    print(f"wrote {args.out}.json and {args.out}.md")


def summary(runs: list[dict], configs: list[str]) -> list[dict]:
    """Per configuration: the median of its rounds and the spread (lowest, highest)."""
    out = []
    for name in configs:
        good = [r for r in runs if r["config"] == name and "error" not in r]
        row = {"config": name, "runs": len(good), "failed": sum(r["config"] == name and "error" in r for r in runs),
               "compute_dtype": "/".join(sorted({r["compute_dtype"] for r in good if r.get("compute_dtype")}))}
        for key in ("labelled_tokens_per_s", "seconds_per_step", "wall_seconds", "mfu", "peak_rss_mb"):
            values = [r[key] for r in good if r.get(key) is not None]
            if values:
                row[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        out.append(row)
    base = next((r for r in out if r["config"] == "hf_trainer_qv" and "labelled_tokens_per_s" in r), None)
    for row in out:
        if base and "labelled_tokens_per_s" in row:
            row["vs_hf_trainer_qv"] = round(row["labelled_tokens_per_s"]["median"]
                                            / base["labelled_tokens_per_s"]["median"], 2)
    return out


def _cell(stat: dict | None, fmt: str) -> str:
    if not stat:
        return ""
    return f"{stat['median']:{fmt}} ({stat['min']:{fmt}}-{stat['max']:{fmt}})"


def markdown(report: dict) -> str:
    m = report["machine"]
    peaks = ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in report["matmul_peak_flops"].items())
    lines = [f"# Training speed, side by side ({report['created']})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} with {m['threads']} threads; "
             f"native bf16: {', '.join(m['bf16_instructions']) or 'none'}; matmul peaks (probe, same run): "
             f"{peaks}. Command: `make bench` (`bench/speed.py`; what each configuration runs is in its "
             "docstring).",
             f"Workload: {report['examples']} prompt/completion rows (~20-460 tokens), completion-only "
             f"loss; the bare configurations run batch {report['batch']} for {report['steps']} optimizer "
             "steps; `ours_defaults` runs whatever the defaults choose. "
             f"{report['repeats']} rounds, configurations alternated; median (lowest-highest).", "",
             "| configuration | computes in | labelled tok/s (whole train call) | vs hf_trainer_qv | s/step | MFU | wall s | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|"]
    for row in report["summary"]:
        if not row["runs"]:
            lines.append(f"| {row['config']} | | failed | | | | | |")
            continue
        lines.append(f"| {row['config']} | {row.get('compute_dtype', '')} | {_cell(row.get('labelled_tokens_per_s'), '.1f')} | "
                     f"{row.get('vs_hf_trainer_qv', '')}x | {_cell(row.get('seconds_per_step'), '.2f')} | "
                     f"{_cell(row.get('mfu'), '.1%')} | {_cell(row.get('wall_seconds'), '.0f')} | "
                     f"{_cell(row.get('peak_rss_mb'), '.0f')} |")
    lines += ["", "Labelled tokens carry a label (completion tokens predicted); the rate is over the "
              "whole `train()` call (set-up, replay generation, saving included), s/step is the "
              "median optimizer step. MFU: `train/meter.py` (useful FLOPs: the output layer only "
              "where it runs usefully, padding never) over the matmul peak of the precision each run "
              "computes in.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
