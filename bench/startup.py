"""Start-up: how long `train()` takes to reach its first optimizer step, first and second run.

    .venv/bin/python bench/startup.py

Two runs of the defaults, each in a fresh process, on the issue-17 case (a dozen made-up facts,
`tests/docs_fixtures/facts.jsonl`, the embedded model), with a cache folder of their own
(`FINETUNING_SUITE_CACHE`) that starts empty but for the converted embedded model (converting
the shipped GGUF once is the package's stand-in for a download, not part of a run). The first
run measures the machine (matmul peaks, the estimate's calibration step) and asks the base model
the self-replay and retention-probe prompts; the second finds all of that cached and should
start at once. Each run stops after `STEPS` optimizer steps (everything before the first step
is what a full run does). The figure is the run's own `seconds_to_first_step` (from the call
of `train()` to the first `on_step_begin`); the model load before `train()` is listed beside
it. Results: `bench/results/startup.{json,md}`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
STEPS = 2

CHILD = r"""
import json, sys, time, tempfile
t0 = time.time()
from finetuning_suite import FineTuner
ft = FineTuner(dataset_name=sys.argv[1], max_length=64, max_steps=int(sys.argv[2]))
loaded = time.time() - t0
with tempfile.TemporaryDirectory() as tmp:
    metrics = ft.train(tmp + "/run")
print("RESULT " + json.dumps({"load_s": round(loaded, 1),
                              "seconds_to_first_step": metrics.get("seconds_to_first_step"),
                              "total_s": round(time.time() - t0, 1)}))
"""


def child(cache: Path) -> dict:
    env = {**os.environ, "FINETUNING_SUITE_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(ROOT / "tests" / "docs_fixtures" / "facts.jsonl"),
                           str(STEPS)], env=env, capture_output=True, text=True, cwd=ROOT)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if done.returncode or line is None:
        raise SystemExit(f"the run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(line.removeprefix("RESULT "))


def main() -> int:
    sys.path.insert(0, str(ROOT / "bench"))
    from quality import machine

    from finetuning_suite.model.embedded import cache_dir, embedded_model_dir

    embedded_model_dir()  # converted once into the real cache
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        (cache / "gguf").symlink_to(cache_dir() / "gguf", target_is_directory=True)
        first = child(cache)
        second = child(cache)
    data = {"machine": machine(), "steps": STEPS, "first": first, "second": second,
            "created": time.strftime("%Y-%m-%d %H:%M")}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "startup.json").write_text(json.dumps(data, indent=2) + "\n")
    m = data["machine"]
    lines = ["# Start-up: seconds from `train()` to the first optimizer step", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads; "
             f"measured {data['created']} with `bench/startup.py`, one run each.", "",
             __doc__.split("\n\n", 2)[2].strip().replace("\n", " "), "",
             "| run | model load s (before train()) | train() to first step s | whole process s |",
             "|---|---|---|---|"]
    for name in ("first", "second"):
        r = data[name]
        lines.append(f"| {name} | {r['load_s']} | {r['seconds_to_first_step']} | {r['total_s']} |")
    (RESULTS / "startup.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
