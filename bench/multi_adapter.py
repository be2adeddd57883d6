"""Several adapters on one base (`AdapterSet`, `finetune serve --model_id a --model_id b`): what
the second adapter costs in memory, and how requests for two adapters are best batched.

- **memory**: the parameter bytes of `FineTuner(run_a).model` (base + one adapter) and of an
  `AdapterSet` of runs a and b (base + both), beside the bytes in run b's
  `adapter_model.safetensors` and the base's; and the resident memory (and its peak) of a fresh
  process once it has loaded each, or two FineTuners (what one server per run holds in all),
  and generated with each model (safetensors weights are memory-mapped: untouched, they are
  not resident).
- **batching**: 8 prompts, 4 for each adapter, interleaved as concurrent clients send them:
  *per adapter* (what the engine does: `set_adapter`, one `generate_batch` of that adapter's 4,
  then the other's), *mixed* (one `generate` call of all 8 with peft's per-row
  `adapter_names=`), and *one adapter, 8 rows* (the ceiling: one batch, one adapter); rounds
  alternated, median seconds, and whether per adapter and mixed give the same text. Plus the
  cost of one `set_adapter` switch.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 .venv/bin/python bench/multi_adapter.py [--max-tokens 32]
        [--rounds 3] [--model_id PATH] [--out bench/results/multi_adapter.json]
        [--parts memory,batching]

The two adapters are fresh LoRA adapters of the default settings with random B matrices (so they
change the answers), saved as run folders; training would not change what is measured. Writes
`--out` (JSON) and the same name with `.md`.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import PROMPTS, machine  # noqa: E402  (bench/serve.py: the same 8 prompts)

from finetuning_suite import DefaultInferenceHandler, FineTuner  # noqa: E402
from finetuning_suite.adapter_set import AdapterSet  # noqa: E402

RSS = """
import gc, sys
from finetuning_suite import FineTuner
from finetuning_suite.adapter_set import AdapterSet
kind, a, b = sys.argv[1:4]
keep = {"one": lambda: [FineTuner(a, device="cpu")],
        "set": lambda: list(AdapterSet({"a": a, "b": b}, device="cpu")),
        "two": lambda: [FineTuner(a, device="cpu"), FineTuner(b, device="cpu")]}[kind]()
for model in keep:  # every weight read once (weights memory-mapped from safetensors load lazily)
    model.generate("Hi", 2)
gc.collect()
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(*(int(status[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")))
"""


def make_runs(model_id, root: Path) -> dict:
    runs = {}
    for name, seed in (("a", 1), ("b", 2)):
        ft = FineTuner(model_id, device="cpu")
        torch.manual_seed(seed)
        with torch.no_grad():
            for weight, param in ft.model.named_parameters():
                if "lora_B" in weight:
                    param.normal_(0.0, 0.02)
        ft.save(root / name)
        runs[name] = str(root / name)
        del ft
    return runs


def parameter_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def file_bytes(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys())


def rss(kind: str, runs: dict) -> dict:
    """The resident memory of a fresh process once it has loaded `kind` and generated with each
    model, and its peak."""
    out = subprocess.run([sys.executable, "-c", RSS, kind, runs["a"], runs["b"]],
                         capture_output=True, text=True, check=True, env=os.environ)
    now, peak = map(int, out.stdout.strip().splitlines()[-1].split())
    return {"rss": now, "peak": peak}


def memory(runs: dict, models: AdapterSet) -> dict:
    one = FineTuner(runs["a"], device="cpu")
    base_file = Path(one.source.path) / "model.safetensors"
    out = {"one_adapter_bytes": parameter_bytes(one.model), "set_bytes": parameter_bytes(models.model),
           "adapter_b_file_bytes": file_bytes(Path(runs["b"]) / "adapter_model.safetensors"),
           "base_file_bytes": file_bytes(base_file) if base_file.is_file() else None}
    del one
    out["growth_bytes"] = out["set_bytes"] - out["one_adapter_bytes"]
    out["rss"] = {kind: rss(kind, runs) for kind in ("one", "set", "two")}
    return out


def batching(models: AdapterSet, max_tokens: int, rounds: int) -> dict:
    a, b = models["a"], models["b"]
    owner = [a, b] * 4  # interleaved, as concurrent clients send them
    peft_names = [v.adapter for v in owner]
    mixed_handler = DefaultInferenceHandler(chat_format=a.chat_format, adapter_names=peft_names)
    model = models.model

    def per_adapter():
        out = {}
        for view in (a, b):
            rows = [i for i, v in enumerate(owner) if v is view]
            with view.active():
                gens = view.inference_handler.generate_batch([PROMPTS[i] for i in rows], model,
                                                             view.tokenizer, "cpu", max_tokens)
            out.update(zip(rows, gens))
        return [out[i] for i in range(len(owner))]

    def mixed():
        return mixed_handler.generate_batch(PROMPTS, model, a.tokenizer, "cpu", max_tokens)

    def one_adapter():
        with a.active():
            return a.inference_handler.generate_batch(PROMPTS, model, a.tokenizer, "cpu", max_tokens)

    runs = {"per_adapter": per_adapter, "mixed": mixed, "one_adapter_8": one_adapter}
    seconds = {k: [] for k in runs}
    results = {}
    for _ in range(rounds):
        for name, fn in runs.items():
            start = time.perf_counter()
            results[name] = fn()
            seconds[name].append(time.perf_counter() - start)
    out = {}
    for name in runs:
        tokens = sum(g.new_tokens for g in results[name])
        median = statistics.median(seconds[name])
        out[name] = {"seconds": seconds[name], "median_s": median, "new_tokens": tokens,
                     "tokens_per_s": tokens / median}
    out["same_text_per_adapter_vs_mixed"] = sum(
        x.text == y.text for x, y in zip(results["per_adapter"], results["mixed"]))
    start = time.perf_counter()
    for i in range(200):
        model.set_adapter((a, b)[i % 2].adapter, inference_mode=True)
    out["set_adapter_ms"] = (time.perf_counter() - start) / 200 * 1000
    return out


def write_markdown(path: Path, r: dict) -> None:
    m, b = r["memory"], r["batching"]
    mb = lambda n: f"{n / 1e6:.2f} MB" if n is not None else "-"  # noqa: E731
    per, mixed, one = b["per_adapter"], b["mixed"], b["one_adapter_8"]
    lines = [
        "# Several adapters on one base", "",
        f"`bench/multi_adapter.py`, model `{r['model']}`, two fresh LoRA adapters of the default "
        f"settings (random B), greedy, chat template, max_tokens {r['max_tokens']}, "
        f"{r['rounds']} alternated rounds (median).", "",
        f"Machine: {r['machine']['cpu']}, {r['machine']['cpus']} CPUs, torch "
        f"{r['machine']['torch']} with {r['machine']['torch_threads']} threads, fp32. Load "
        f"average before: {r['loadavg_before'][0]:.2f}, after: {r['loadavg_after'][0]:.2f}.", "",
        "## Memory", "",
        "| | bytes |", "|---|---|",
        f"| base weights (its model.safetensors) | {mb(m['base_file_bytes'])} |",
        f"| adapter b (its adapter_model.safetensors) | {mb(m['adapter_b_file_bytes'])} |",
        f"| FineTuner(run a): parameters | {mb(m['one_adapter_bytes'])} |",
        f"| AdapterSet(a, b): parameters | {mb(m['set_bytes'])} |",
        f"| growth for adapter b | **{mb(m['growth_bytes'])}** |",
        *[f"| a process that loaded {label}: resident (peak) | {mb(m['rss'][k]['rss'])} "
          f"({mb(m['rss'][k]['peak'])}) |"
          for k, label in (("one", "FineTuner(run a)"), ("set", "AdapterSet(a, b)"),
                           ("two", "FineTuner(a) and FineTuner(b)"))], "",
        "## Batching 8 requests, 4 per adapter, interleaved", "",
        "| how | seconds | new tokens | tokens/s | vs per adapter |", "|---|---|---|---|---|",
        *[f"| {label} | {x['median_s']:.1f} | {x['new_tokens']} | {x['tokens_per_s']:.1f} | "
          f"{x['tokens_per_s'] / per['tokens_per_s']:.2f}x |"
          for label, x in (("per adapter (set_adapter, 2 batches of 4): the engine", per),
                           ("mixed (one batch of 8, peft adapter_names)", mixed),
                           ("one adapter, one batch of 8 (ceiling)", one))], "",
        f"Same text, per adapter vs mixed: {b['same_text_per_adapter_vs_mixed']}/8. One "
        f"set_adapter switch: {b['set_adapter_ms']:.3f} ms.",
    ]
    path.write_text("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_id", default=None)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "multi_adapter.json"))
    parser.add_argument("--parts", default="memory,batching",
                        help="what to measure; a part left out keeps its numbers from --out")
    args = parser.parse_args()
    out = Path(args.out)
    parts = set(args.parts.split(","))
    results = json.loads(out.read_text()) if parts != {"memory", "batching"} and out.is_file() else {}
    results.update({"machine": machine(), "model": args.model_id or "embedded SmolLM2-135M-Instruct",
                    "max_tokens": args.max_tokens, "rounds": args.rounds,
                    "loadavg_before": os.getloadavg()})
    with tempfile.TemporaryDirectory() as tmp:
        runs = make_runs(args.model_id, Path(tmp))
        models = AdapterSet({"a": runs["a"], "b": runs["b"]}, device="cpu")
        if "memory" in parts:
            results["memory"] = memory(runs, models)
        if "batching" in parts:
            results["batching"] = batching(models, args.max_tokens, args.rounds)
    results["loadavg_after"] = os.getloadavg()
    out.write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(out.with_suffix(".md"), results)
    print(json.dumps({"growth_bytes": results["memory"]["growth_bytes"],
                      "rss": results["memory"]["rss"],
                      **{k: v["tokens_per_s"] for k, v in results["batching"].items() if isinstance(v, dict)}}),
          f"\nwrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
