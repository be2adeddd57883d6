"""Training speed, side by side: ours against the pipelines a user could pick instead.

    make bench                      # every configuration, results in bench/results/speed.{json,md}
    .venv/bin/python bench/speed.py --configs ours hf --steps 6

One workload for all (`workload()`): 96 instruction examples from a fixed seed, prompt +
completion from 20 to ~500 tokens, loss on the completion only. Every configuration trains the
embedded SmolLM2-135M-Instruct with the same LoRA (r=16, alpha=32, every linear layer, dropout
0.05), learning rate 1e-3, batch 8, one epoch (12 optimizer steps: every configuration
sees the same examples, in its own order), on the CPU in fp32 unless
the configuration says otherwise, each in its own process (so peak RSS is its own), one after
the other. Every step is timed, the first included.

Configurations:
- `ours`: `FineTuner` with its defaults (chat template, labelled-only loss, random order),
  self-replay off (it adds rows, not speed);
- `ours_grouped`: ours with length-grouped batches (`train_sampling_strategy=group_by_length`);
- `ours_full_head`: ours with the Trainer's own loss (the output layer on every position);
- `ours_max_length_x2`: ours with `max_seq_length` doubled (cost must follow real tokens);
- `ours_qlora`: ours with `quantize=True` (4-bit NF4 base);
- `ours_bf16`: ours with `bf16=True` (bf16 autocast, fp32 master weights): on CPUs whose bf16
  matmul beats fp32 (AVX512-BF16/AMX), an option worth measuring;
- `seed`: the original attempt's pipeline: every example padded to `max_length` (512) and
  `DataCollatorForSeq2Seq`, plain `Trainer`;
- `hf`: plain `Trainer` + PEFT with dynamic padding (`DataCollatorForSeq2Seq`);
- `trl_default`, `trl_packing`, `trl_cpu_best`: TRL's `SFTTrainer` with its defaults (bf16,
  gradient checkpointing), with `packing=True` (bfd), and with the best CPU choice
  (`bf16=False`, `gradient_checkpointing=False`).

Reported per configuration: useful tokens/s (tokens that carry a label, i.e. completion tokens
predicted), total tokens/s (non-padding tokens fed) and padded tokens/s (what the model computes
on), seconds per step, MFU, peak RSS. MFU = useful FLOPs/s over this machine's fp32 matmul peak,
measured by a probe in the same run (`train/meter.measure_matmul_peak`). Useful FLOPs: 4N per
non-padding token for the frozen base (N = weights in matrix multiplies, lm_head excluded),
plus 4 x N_head per labelled token (the output layer is only needed where a label is), plus
attention 12 x layers x width x L per token over each example's own length L (PaLM's formula).
Padding, and the output layer at unlabelled positions, count as waste, not as useful work.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CONFIGS = ["ours", "ours_grouped", "ours_full_head", "ours_max_length_x2", "ours_qlora", "ours_bf16",
           "seed", "hf", "trl_cpu_best", "trl_default", "trl_packing"]
BATCH, LR, MAX_LENGTH, N_EXAMPLES = 8, 1e-3, 512, 96
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear")

WORDS = ("river light stone market winter garden letter engine silver north window paper "
         "orange music harbor forest bridge number yellow animal summer travel coffee doctor "
         "island mirror planet rocket school season spring theatre tunnel valley village wheel "
         "basket candle castle circle cotton dinner family finger flower friend ground hammer "
         "jacket kettle ladder meadow pencil pepper pillow pocket puzzle rabbit saddle shadow "
         "signal sister spider table ticket tomato travel turtle velvet wagon whistle").split()


def workload(seed: int = 0) -> list[dict]:
    """N_EXAMPLES prompt/completion rows, total length spread from ~20 to ~500 tokens: a task
    (sort, reverse or count a list of words) over a list whose length is drawn per example."""
    rng = random.Random(seed)
    rows = []
    for i in range(N_EXAMPLES):
        n = int(4 + (rng.random() ** 1.5) * 150)  # many short, some long
        items = [rng.choice(WORDS) for _ in range(n)]
        task = i % 3
        if task == 0:
            prompt, completion = f"Sort these words alphabetically: {' '.join(items)}", " ".join(sorted(items))
        elif task == 1:
            prompt, completion = f"Write these words in reverse order: {' '.join(items)}", " ".join(reversed(items))
        else:
            keep = items[: max(2, n // 3)]
            prompt = f"List the distinct words, in first-seen order: {' '.join(keep)}"
            completion = ", ".join(dict.fromkeys(keep))
        rows.append({"prompt": prompt, "completion": completion})
    return rows


# -- measurement, inside each configuration's process ------------------------------------------
class Counting:
    """Wraps a data collator: counts padded, non-padding and labelled tokens of every batch."""

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
                             "labelled": labelled, "sq": int(sum(l * l for l in lengths))})
        return batch


def step_timer():
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_begin(self, args, state, control, **kw):
            if not self.times:
                self.times.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter())
    return Timer()


def _common_args(steps: int, out: str, **extra):
    return dict(output_dir=out, max_steps=steps, per_device_train_batch_size=BATCH, learning_rate=LR,
                warmup_steps=0, lr_scheduler_type="constant", logging_steps=1, save_strategy="no",
                report_to="none", disable_tqdm=True, seed=42, dataloader_num_workers=0, **extra)


def _tokenize_hf(tokenizer, rows, pad_to: int | None):
    """Prompt + completion + EOS, labels -100 on the prompt (completion-only loss), no chat
    template (as a plain HF user writes it); padded to `pad_to` when given (seed-style)."""
    out = []
    for r in rows:
        p = tokenizer(r["prompt"] + "\n")["input_ids"]
        c = tokenizer(r["completion"])["input_ids"] + [tokenizer.eos_token_id]
        ids = (p + c)[:MAX_LENGTH]
        labels = ([-100] * len(p) + c)[:MAX_LENGTH]
        row = {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}
        if pad_to:
            n = pad_to - len(ids)
            row = {"input_ids": ids + [tokenizer.pad_token_id] * n, "attention_mask": [1] * len(ids) + [0] * n,
                   "labels": labels + [-100] * n}
        out.append(row)
    import datasets

    return datasets.Dataset.from_list(out)


def _peft_model(quantize: bool = False):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetuning_suite.model.embedded import embedded_model_dir

    path = str(embedded_model_dir())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    torch.manual_seed(42)
    return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **LORA)), tok


def run_config(name: str, steps: int, out: str) -> dict:
    import torch

    torch.manual_seed(42)
    rows = workload()
    timer = step_timer()
    counter: Counting | None = None
    if name.startswith("ours"):
        from finetuning_suite import DefaultTrainerConfig, FineTuner

        class Measured(DefaultTrainerConfig):
            def build_trainer(self, **kw):
                nonlocal counter
                trainer = super().build_trainer(**kw)
                counter = Counting(trainer.data_collator)
                trainer.data_collator = counter
                trainer.add_callback(timer)
                return trainer

        extra = {"ours_grouped": {"train_sampling_strategy": "group_by_length"},
                 "ours_bf16": {"bf16": True}}.get(name, {})
        cfg = Measured(**_common_args(steps, out, **extra))
        cfg.labelled_loss = name != "ours_full_head"
        ft = FineTuner(device="cpu", dataset_name=rows, self_replay=False, trainer_config=cfg,
                       lora_r=LORA["r"], lora_alpha=LORA["lora_alpha"], lora_dropout=LORA["lora_dropout"],
                       lora_target_modules="all-linear", quantize=name == "ours_qlora",
                       max_seq_length=2 * MAX_LENGTH if name == "ours_max_length_x2" else MAX_LENGTH)
        model = ft.model
        ft.train(out)
    elif name in ("seed", "hf"):
        from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

        model, tok = _peft_model()
        data = _tokenize_hf(tok, rows, MAX_LENGTH if name == "seed" else None)
        counter = Counting(DataCollatorForSeq2Seq(tok, label_pad_token_id=-100))
        trainer = Trainer(model=model, args=TrainingArguments(**_common_args(steps, out, use_cpu=True)),
                          train_dataset=data, data_collator=counter, callbacks=[timer])
        trainer.train()
    elif name.startswith("trl"):
        import datasets
        from trl import SFTConfig, SFTTrainer

        model, tok = _peft_model()
        settings = dict(max_length=MAX_LENGTH, use_cpu=True)
        if name == "trl_packing":
            settings["packing"] = True
        if name == "trl_cpu_best":
            settings.update(bf16=False, gradient_checkpointing=False)
        trainer = SFTTrainer(model=model, args=SFTConfig(**_common_args(steps, out, **settings)),
                             train_dataset=datasets.Dataset.from_list(rows), processing_class=tok,
                             callbacks=[timer])
        counter = Counting(trainer.data_collator)
        trainer.data_collator = counter
        trainer.train()
    else:
        raise SystemExit(f"unknown configuration {name!r}; choose from {CONFIGS}")
    return summarize(name, model, counter, timer.times, steps)


def summarize(name, model, counter, times, steps) -> dict:
    from finetuning_suite.train.meter import _output_embeddings, estimate_flops_per_token

    # every step is timed, the first included: with length grouping the first batch is the
    # longest (the sampler puts it first), so skipping it would flatter the grouped runs; over
    # a whole epoch every configuration (but packing) computes on exactly the same examples
    timed = counter.batches[:steps]
    seconds = times[-1] - times[0] if len(times) > 1 else float("nan")
    sums = {k: sum(b[k] for b in timed) for k in ("padded", "tokens", "labelled", "sq")}
    head = _output_embeddings(model)
    n_head = head.weight.numel() if head is not None else 0
    per_token = estimate_flops_per_token(model, full=False)  # 4N, lm_head included once
    cfg = model.config
    width = cfg.num_attention_heads * (cfg.hidden_size // cfg.num_attention_heads)
    useful = (sums["tokens"] * (per_token - 4 * n_head) + sums["labelled"] * 4 * n_head
              + 12 * cfg.num_hidden_layers * width * sums["sq"])
    return {"config": name, "steps_timed": len(timed), "seconds": round(seconds, 2),
            "seconds_per_step": round(seconds / max(len(timed), 1), 3),
            "useful_tokens_per_s": round(sums["labelled"] / seconds, 2),
            "tokens_per_s": round(sums["tokens"] / seconds, 2),
            "padded_tokens_per_s": round(sums["padded"] / seconds, 2),
            "useful_flops_per_s": useful / seconds, "tokens": sums,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


# -- the driver ----------------------------------------------------------------------------------
def machine() -> dict:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=CONFIGS, choices=CONFIGS)
    p.add_argument("--steps", type=int, default=N_EXAMPLES // BATCH,
                   help="optimizer steps per configuration; default: one epoch")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--timeout", type=int, default=1200, help="seconds per configuration before it is stopped")
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
            result = run_config(args.one, args.steps, tmp)
        Path(args.result).write_text(json.dumps(result))
        return

    from finetuning_suite.train.meter import measure_matmul_peak

    peak = measure_matmul_peak(torch.float32, "cpu", seconds=3.0)
    print(f"fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} threads)")
    results = []
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    for name in args.configs:
        result_file = Path(args.out + f".{name}.tmp.json")
        cmd = [sys.executable, __file__, "--one", name, "--steps", str(args.steps), "--result", str(result_file)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        started = time.time()
        load_before = os.getloadavg()[0]
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
            ok = proc.returncode == 0 and result_file.exists()
            result = json.loads(result_file.read_text()) if ok else {
                "config": name, "error": (proc.stderr or "")[-1500:]}
        except subprocess.TimeoutExpired:
            result = {"config": name, "error": f"did not finish {args.steps} steps in {args.timeout} s"}
        result_file.unlink(missing_ok=True)
        result["wall_seconds"] = round(time.time() - started, 1)
        # other work on the machine skews a configuration's numbers: record the load around it
        result["load_avg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        if "useful_flops_per_s" in result:
            result["mfu"] = round(result["useful_flops_per_s"] / peak, 4)
        results.append(result)
        print(json.dumps({k: v for k, v in result.items() if k not in ("tokens", "error")}), flush=True)
        if "error" in result:
            print("  error:", result["error"][-400:], flush=True)
    report = {"machine": machine(), "matmul_peak_flops": peak, "steps": args.steps, "batch": BATCH,
              "examples": N_EXAMPLES, "lora": LORA, "learning_rate": LR, "max_length": MAX_LENGTH,
              "created": time.strftime("%Y-%m-%d %H:%M"), "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(report, indent=2) + "\n")
    Path(args.out + ".md").write_text(markdown(report))
    print(f"wrote {args.out}.json and {args.out}.md")


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# Training speed, side by side ({report['created']})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} with {m['threads']} threads; "
             f"fp32 matmul peak (probe, same run) {report['matmul_peak_flops'] / 1e9:.1f} GFLOP/s.",
             f"Workload: {report['examples']} prompt/completion examples (20-500 tokens), completion-only "
             f"loss, batch {report['batch']}, {report['steps']} optimizer steps per configuration "
             f"(all timed), LoRA r=16/alpha=32 on every linear layer, embedded SmolLM2-135M.", "",
             "| configuration | useful tok/s | tokens/s | padded tok/s | s/step | MFU | peak RSS MB | load before/after |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['config']} | failed: {r['error'].splitlines()[-1][:80] if r['error'] else '?'} | | | | | | |")
            continue
        lines.append(f"| {r['config']} | {r['useful_tokens_per_s']:.1f} | {r['tokens_per_s']:.1f} | "
                     f"{r['padded_tokens_per_s']:.1f} | {r['seconds_per_step']:.2f} | {r.get('mfu', 0):.1%} | "
                     f"{r['peak_rss_mb']:.0f} | {r['load_avg_1min'][0]}/{r['load_avg_1min'][1]} |")
    lines += ["", "Useful tokens carry a label (completion tokens). MFU counts useful FLOPs only "
              "(see bench/speed.py's docstring); padding and the output layer at unlabelled "
              "positions are waste.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
