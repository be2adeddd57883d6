"""The estimate before a run against what the run then measures: LoRA, QLoRA and full.

    .venv/bin/python bench/estimate.py                     # the three methods, ~6 min on 2 cores
    .venv/bin/python bench/estimate.py --methods lora --steps 4
    .venv/bin/python bench/estimate.py --device cuda          # on a GPU: the allocator's peak

Each method runs in its own process: `FineTuner(dataset_name="facts", method=M)` on the
embedded SmolLM2-135M-Instruct on the CPU with the package's defaults (batch, LoRA targets and
dropout, self-replay rows, precision; QLoRA: gradient checkpointing), except `max_steps`
(`--steps`), `save_strategy="no"` and `retention_probe=False` (neither is part of a training
step). `train()` makes its estimate before training as every run does (`train/estimate.py`; its
calibration is made afresh here, not read from the machine cache), then trains, while the bench
measures:

- peak memory: the process's resident memory, sampled every 5 ms from the first to the last
  training step (what the estimate's total predicts: weights, adapter, gradients, optimizer
  state, activations, runtime); on CUDA the most the caching allocator reserved on the card
  (`torch.cuda.max_memory_reserved`) over the same span;
- seconds per step: each optimizer step from `on_step_begin` to `on_step_end`; the first step
  apart (it carries one-time costs), the mean of the others against the estimate for the same
  batches (the batches the run drew, priced at the estimate's rate plus its optimizer step) and
  against the estimate's own mean over an epoch (what its total time uses).

Results: `bench/results/estimate.{json,md}`, with the machine and its load.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
METHODS = ["lora", "qlora", "full"]
TARGET = 0.25


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssSampler:
    """The most resident memory seen while running (a thread reading /proc/self/statm)."""

    def __init__(self, every: float = 0.005):
        self.every, self.peak, self._stop = every, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(self.every)

    def start(self):
        self.peak = rss()
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())


def one(method: str, steps: int, result_path: str, device: str = "cpu") -> None:
    """Train one method and write what was estimated and measured to `result_path`."""
    import torch
    from transformers import TrainerCallback

    from finetuning_suite import FineTuner
    from finetuning_suite.train import estimate, machine
    from finetuning_suite.train.loss import uses_labelled_loss
    from finetuning_suite.train.meter import flop_shape
    from finetuning_suite.train.trainer_config import DefaultTrainerConfig

    read = machine.cached_value
    machine.cached_value = lambda name, device="cpu": None if name.startswith("calibration/") else read(name, device)

    measured = {"steps": [], "batches": []}
    state = {"training": False}

    class Meter(TrainerCallback):
        def on_train_begin(self, args, st, control, **kw):
            self.sampler = RssSampler()
            measured["rss_at_train_begin"] = rss()
            self.sampler.start()
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            state["training"] = True

        def on_step_begin(self, args, st, control, **kw):
            self.t0 = time.perf_counter()

        def on_pre_optimizer_step(self, args, st, control, **kw):
            self.t1 = time.perf_counter()

        def on_optimizer_step(self, args, st, control, **kw):
            measured.setdefault("optimizer", []).append(time.perf_counter() - self.t1)

        def on_step_end(self, args, st, control, **kw):
            measured["steps"].append(time.perf_counter() - self.t0)

        def on_train_end(self, args, st, control, **kw):
            state["training"] = False
            self.sampler.stop()
            measured["peak_rss_training"] = self.sampler.peak
            measured["peak"] = self.sampler.peak
            if device.startswith("cuda"):
                measured["peak"] = torch.cuda.max_memory_reserved()
                measured["peak_cuda_allocated"] = torch.cuda.max_memory_allocated()

    build = DefaultTrainerConfig.build_trainer

    def build_trainer(self, **kwargs):
        trainer = build(self, **kwargs)
        shape = flop_shape(kwargs["model"])
        head_everywhere = not uses_labelled_loss(trainer)
        collate = trainer.data_collator

        def recording(rows):
            batch = collate(rows)
            if state["training"]:
                measured["batches"].append(estimate.batch_flops(shape, batch, head_everywhere))
                measured["largest_batch_tokens"] = max(measured.get("largest_batch_tokens", 0),
                                                       batch["input_ids"].numel())
            return batch

        trainer.data_collator = recording
        trainer.add_callback(Meter())
        return trainer

    DefaultTrainerConfig.build_trainer = build_trainer
    with tempfile.TemporaryDirectory() as out:
        ft = FineTuner(dataset_name="facts", method=method, device=device, max_steps=steps,
                       save_strategy="no", retention_probe=False, output_dir=out)
        started = time.perf_counter()
        ft.train()
        measured["train_call_s"] = time.perf_counter() - started
    est = ft.estimate
    t = est["time"]
    rate, opt = t["flops_per_second"], t["optimizer_seconds"]
    ga = est["accumulation"]
    later = measured["steps"][1:] or measured["steps"]
    batches = measured["batches"][ga:] if len(measured["batches"]) > ga else measured["batches"]
    same_batches = sum(batches) / rate / (len(batches) / ga) + opt if rate else None
    # the run's peak is at its largest batch; a short run may not draw the longest row: the
    # estimate scaled to the largest batch it drew (activations in proportion to the tokens)
    mem = est["memory"]
    share = measured["largest_batch_tokens"] / (est["batch"] * est["longest"])
    act = mem["activations"] or 0
    moving = mem["at_once"] if mem["at_once"] is not None else act + mem["gradients"]
    drawn = (mem["total"] - max(moving, mem["gradients"])
             + max(moving - act + act * share, mem["gradients"]))
    result = {
        "method": method, "device": device, "steps": steps, "threads": torch.get_num_threads(),
        "estimate": est,
        "measured": {
            "peak": measured["peak"],
            "peak_rss_training": measured["peak_rss_training"],
            "peak_cuda_allocated": measured.get("peak_cuda_allocated"),
            "rss_at_train_begin": measured["rss_at_train_begin"],
            "process_peak_rss": _hwm(),
            "first_step_s": measured["steps"][0],
            "optimizer_step_s": _mean(measured["optimizer"][1:] or measured["optimizer"]),
            "mean_step_s": sum(later) / len(later),
            "step_s": [round(x, 3) for x in measured["steps"]],
            "train_call_s": measured["train_call_s"],
        },
        "compare": {
            "memory_ratio": est["memory"]["total"] / measured["peak"],
            "estimated_peak_drawn_batches": drawn,
            "largest_drawn_share_of_worst": share,
            "memory_ratio_drawn_batches": drawn / measured["peak"],
            "step_ratio_same_batches": same_batches / (sum(later) / len(later)) if same_batches else None,
            "step_ratio_epoch_mean": t["seconds_per_step"] / (sum(later) / len(later)) if t["seconds_per_step"] else None,
            "estimated_step_same_batches_s": same_batches,
        },
    }
    Path(result_path).write_text(json.dumps(result, indent=2, default=str))


def _mean(values):
    return sum(values) / len(values) if values else None


def _hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def machine_info(device: str = "cpu") -> dict:
    import torch

    from finetuning_suite.train.machine import cpu_model, device_name, system_memory_available

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__, "device": device_name(device),
            "python": platform.python_version(), "memory_available_gib": round(system_memory_available() / 2 ** 30, 1)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    p.add_argument("--steps", type=int, default=8, help="max_steps of each run")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", default=str(RESULTS / "estimate"), help="results path without extension")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        one(args.one, args.steps, args.result, args.device)
        return
    rows, load = [], [os.getloadavg()]
    for method in args.methods:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
            path = fh.name
        cmd = [sys.executable, __file__, "--one", method, "--steps", str(args.steps), "--result", path,
               "--device", args.device]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        print("running", " ".join(cmd[1:]), flush=True)
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"{method} failed")
        rows.append(json.loads(Path(path).read_text()))
        Path(path).unlink()
        load.append(os.getloadavg())
        c = rows[-1]["compare"]
        print(f"{method}: memory x{c['memory_ratio']:.2f} (x{c['memory_ratio_drawn_batches']:.2f} drawn), step x{c['step_ratio_same_batches']:.2f} "
              f"(same batches), x{c['step_ratio_epoch_mean']:.2f} (epoch mean)", flush=True)
    report = {"machine": machine_info(args.device), "device": args.device,
              "load_average_1m_during": [round(x[0], 2) for x in load],
              "steps": args.steps, "dataset": "facts", "target": TARGET, "rows": rows,
              "command": "bench/estimate.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    gib = 2 ** 30
    m = report["machine"]
    peak_kind = "reserved on the card" if report.get("device", "cpu").startswith("cuda") else "resident"
    lines = ["# The estimate before a run against the run", "",
             f"Machine: {m['cpu']}, {m['cores']} cores ({report['rows'][0]['threads']} torch thread(s) "
             f"per run), torch {m['torch']}, device {m['device']}; "
             f"load average (1 min) at the start and after each run: {report['load_average_1m_during']} "
             "(above the core count: the machine was shared with other jobs, and timings move with "
             "their load). Embedded SmolLM2-135M-Instruct, `dataset_name=\"facts\"`, package defaults, "
             f"`max_steps={report['steps']}`, no checkpoints, no retention probe; "
             f"each method in its own process. Command: `{report['command']}`.", "",
             f"| method | estimated peak GiB (run / drawn batches) | measured peak GiB ({peak_kind}) | ratio (run / drawn) "
             "| est. s/step (same batches) | est. s/step (epoch mean) | measured s/step (steps 2+) "
             "| ratio (same) | first step s | optimizer s/step est. / measured |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        e, me, c = r["estimate"], r["measured"], r["compare"]
        lines.append(
            f"| {r['method']} | {e['memory']['total'] / gib:.2f} / {c['estimated_peak_drawn_batches'] / gib:.2f} | "
            f"{me['peak'] / gib:.2f} | "
            f"{c['memory_ratio']:.2f} / {c['memory_ratio_drawn_batches']:.2f} | {c['estimated_step_same_batches_s']:.2f} | "
            f"{e['time']['seconds_per_step']:.2f} | {me['mean_step_s']:.2f} | "
            f"{c['step_ratio_same_batches']:.2f} | {me['first_step_s']:.2f} | "
            f"{e['time']['optimizer_seconds']:.2f} / {me['optimizer_step_s']:.2f} |")
    lines += ["", "Ratio = estimate / measured; the target is within "
              f"{report['target']:.0%} (0.75-1.25). \"run\": the estimate of the whole run's peak (its "
              "batch with the longest row); \"drawn batches\": the same scaled to the largest batch "
              f"the {report['steps']} measured steps drew (activations in proportion to its tokens), "
              "since a short run may not draw the longest row. \"same batches\": the estimate's "
              "rate applied to the batches the run drew; \"epoch mean\": what its time uses.",
              "", "The estimates' breakdowns (GiB; \"at once\": activations and gradients live "
              "together, not in the total):", "",
              "| method | weights | adapter | gradients | optimizer | activations | other ckpt setting | at once | runtime |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        mm = r["estimate"]["memory"]
        cells = [mm[k] for k in ("weights", "adapter", "gradients", "optimizer", "activations",
                                 "activations_other", "at_once", "runtime")]
        lines.append(f"| {r['method']}{' (checkpointing)' if mm['gradient_checkpointing'] else ''} | "
                     + " | ".join("—" if v is None else f"{v / gib:.2f}" for v in cells) + " |")
    lines += ["", "Estimate lines as logged:", ""] + [f"- {r['method']}: {r['estimate']['line']}" for r in report["rows"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
