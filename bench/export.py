"""Export measurements on the embedded SmolLM2-135M-Instruct (CPU): what merging, dequantizing
and GGUF conversion change in the model's output.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python bench/export.py [--steps 30] [--out FILE]

1. LoRA (fp32): a short LoRA run on iso_dates, then `export_model(ft, ..., gguf="f16")` and
   `gguf="q8_0"`. Greedy answers of `ft.generate`, the merged folder, and both GGUF files loaded
   back with transformers' own GGUF loader, on date prompts and general questions; the largest
   logit difference against the merged model (teacher-forced on the merged model's answer);
   file sizes.
2. QLoRA (4-bit NF4 base, bf16 compute as the default config): a short QLoRA run, then the
   merged export, which dequantizes the NF4 weights into a float32 copy of the base and merges
   the adapter there. Compared with the 4-bit model that was trained: greedy answers and
   logits. For scale, the same numbers for merging into the original float32 weights instead
   (`merged_model(ft, quantized_base="original")`) and for the 4-bit base without adapter vs
   the float32 base.

3. llama.cpp (`--parts llama_cpp`, needs the `gguf` extra): the embedded model as loaded
   (`FineTuner()`, its fresh adapter merged), exported to every GGUF type, each file loaded by
   llama.cpp itself (llama-cpp-python, one child process) and compared with the merged folder in
   transformers on ten general questions: greedy answers identical, first answer token
   identical, the largest first-token logit difference, file sizes.

Writes bench/results/export.json (a part run alone updates its own key); the write-up is
bench/results/export.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from finetuning_suite import FineTuner  # noqa: E402
from finetuning_suite.data.sources import load_source  # noqa: E402
from finetuning_suite.export import export_model  # noqa: E402
from finetuning_suite.export.merged import merged_model, reload_base  # noqa: E402

GENERAL = ["What is the capital of France?", "Who wrote Romeo and Juliet?",
           "How many legs does a spider have?", "Which planet is known as the Red Planet?",
           "Give me one tip for sleeping better."]
MAX_NEW = 32


def prompts(n_dates: int) -> list[str]:
    rows = load_source("iso_dates")["validation"]
    return [rows[i]["prompt"] for i in range(n_dates)] + GENERAL


def encode(tok, prompt: str) -> torch.Tensor:
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                   add_generation_prompt=True)
    return tok(text, add_special_tokens=False, return_tensors="pt").input_ids


@torch.inference_mode()
def greedy(model, tok, prompt: str) -> tuple[str, torch.Tensor]:
    """Plain transformers greedy decoding (what a user of the exported folder runs)."""
    ids = encode(tok, prompt)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW,
                         do_sample=False)
    new = out[0, ids.shape[1]:]
    return tok.decode(new, skip_special_tokens=True).strip(), out


@torch.inference_mode()
def logit_gap(a, b, sequence: torch.Tensor) -> dict:
    """Largest |logit difference| and top-1 agreement over every position of `sequence`."""
    la = a(input_ids=sequence).logits.float()
    lb = b(input_ids=sequence).logits.float()
    return {"max_abs_logit_diff": round((la - lb).abs().max().item(), 5),
            "logit_scale": round(la.abs().max().item(), 2),
            "top1_agree": round((la.argmax(-1) == lb.argmax(-1)).float().mean().item(), 4)}


def compare(reference, ref_tok, others: dict, prompt_list: list[str], reference_texts=None) -> dict:
    """Greedy texts of every model and logit gaps against `reference`."""
    rows = []
    for i, p in enumerate(prompt_list):
        ref_text, seq = greedy(reference, ref_tok, p)
        row = {"prompt": p, "reference": ref_text}
        if reference_texts is not None:
            row["finetuner"] = reference_texts[i]
        for name, (model, tok) in others.items():
            text, _ = greedy(model, tok, p)
            row[name] = text
            row[f"{name}_gap"] = logit_gap(reference, model, seq)
        rows.append(row)
    summary = {}
    for name in others:
        summary[name] = {
            "greedy_identical": sum(r[name] == r["reference"] for r in rows),
            "of": len(rows),
            "max_abs_logit_diff": max(r[f"{name}_gap"]["max_abs_logit_diff"] for r in rows),
            "min_top1_agree": min(r[f"{name}_gap"]["top1_agree"] for r in rows),
        }
    if reference_texts is not None:
        summary["reference_vs_finetuner_identical"] = sum(r["reference"] == r["finetuner"] for r in rows)
    return {"summary": summary, "rows": rows}


def train(quantize: bool, steps: int, out: Path) -> tuple[FineTuner, float]:
    ft = FineTuner(dataset_name="iso_dates", device="cpu", max_length=MAX_NEW, quantize=quantize,
                   self_replay=False, max_steps=steps, save_strategy="no", logging_steps=10,
                   disable_tqdm=True, report_to=[])
    started = time.time()
    ft.train(str(out))
    return ft, round(time.time() - started, 1)


def lora_part(steps: int, n_dates: int, work: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ft, train_s = train(False, steps, work / "lora_run")
    plist = prompts(n_dates)
    ft_texts = [ft.generate(p, MAX_NEW) for p in plist]
    result = {"train_seconds": train_s, "steps": steps, "exports": {}}
    models = {}
    for qtype in ("f16", "q8_0"):
        started = time.time()
        written = export_model(ft, work / f"merged_{qtype}", gguf=qtype, overwrite=True)
        result["exports"][qtype] = {
            "seconds": round(time.time() - started, 1),
            "gguf_bytes": os.path.getsize(written["gguf"]),
            "safetensors_bytes": os.path.getsize(written["model"]),
            "modelfile": Path(written["modelfile"]).read_text(),
        }
        gdir, gname = os.path.split(written["gguf"])
        started = time.time()
        models[f"gguf_{qtype}"] = (
            AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gname, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(gdir, gguf_file=gname))
        result["exports"][qtype]["transformers_load_seconds"] = round(time.time() - started, 1)
        folder = written["folder"]
    merged = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    result["comparison"] = compare(merged, tok, models, plist, ft_texts)
    return result


def qlora_part(steps: int, n_dates: int, work: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ft, train_s = train(True, steps, work / "qlora_run")
    plist = prompts(n_dates)
    ft_texts = [ft.generate(p, MAX_NEW) for p in plist]
    started = time.time()
    written = export_model(ft, work / "qlora_merged", overwrite=True)
    export_s = round(time.time() - started, 1)
    merged = AutoModelForCausalLM.from_pretrained(written["folder"], dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(written["folder"])
    config = json.loads(Path(written["config"]).read_text())

    original = merged_model(ft, quantized_base="original").eval()
    four_bit = ft.model.eval()
    result = {"train_seconds": train_s, "steps": steps, "export_seconds": export_s,
              "merged_config_has_quantization_config": "quantization_config" in config,
              "merged_safetensors_bytes": os.path.getsize(written["model"])}
    # reference: the trained 4-bit model; compared: the export (merged into the dequantized NF4
    # weights) and the alternative of merging into the original float32 weights
    result["vs_4bit_model"] = compare(four_bit, ft.tokenizer,
                                      {"merged_export": (merged, tok),
                                       "merged_into_original_fp32": (original, tok)},
                                      plist, ft_texts)
    fp32_base = reload_base(ft).eval()
    with ft.model.disable_adapter():
        result["base_only_4bit_vs_fp32"] = compare(four_bit, ft.tokenizer, {"fp32_base": (fp32_base, tok)},
                                                   plist)["summary"]
    return result


LLAMA_CPP_PROMPTS = GENERAL + ["What is 2 + 2?", "Name a primary color.", "What do bees make?",
                               "Translate 'thank you' into French.",
                               "What is the boiling point of water?"]
LLAMA_CPP_CHILD = r"""
import json, sys
import numpy as np
import llama_cpp
out = []
for job in json.load(sys.stdin):
    llm = llama_cpp.Llama(model_path=job["file"], logits_all=True, verbose=False, n_ctx=512, seed=0)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    rows = []
    for ids in job["prompts"]:
        llm.reset()
        llm.eval(ids)
        first = np.array(llm.scores[len(ids) - 1], dtype=np.float32)
        new = []
        for _ in range(job["max_new"]):
            t = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            if llama_cpp.llama_vocab_is_eog(vocab, t):
                break
            new.append(t)
            llm.eval([t])
        rows.append({"new": new, "first": first.tolist()})
    out.append(rows)
    del llm
print("RESULTS " + json.dumps(out))
"""


def llama_cpp_part(work: Path, types: list[str]) -> dict:
    """Every GGUF type of the embedded model in llama.cpp against the merged model."""
    import subprocess
    import sys

    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ft = FineTuner(device="cpu", max_length=MAX_NEW)
    written = {}
    for qtype in types:
        started = time.time()
        written[qtype] = export_model(ft, work / f"gguf_{qtype}", gguf=qtype, overwrite=True)
        written[qtype]["seconds"] = round(time.time() - started, 1)
    folder = written[types[0]]["folder"]
    tok = AutoTokenizer.from_pretrained(folder)
    merged = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    prompt_ids = [encode(tok, p)[0].tolist() for p in LLAMA_CPP_PROMPTS]
    reference = []
    with torch.inference_mode():
        for ids in prompt_ids:
            x = torch.tensor([ids])
            out = merged.generate(input_ids=x, attention_mask=torch.ones_like(x),
                                  max_new_tokens=MAX_NEW, do_sample=False)[0, len(ids):]
            reference.append({"first": merged(input_ids=x).logits[0, -1].numpy(),
                              "text": tok.decode(out, skip_special_tokens=True).strip(),
                              "first_token": int(out[0])})
    jobs = [{"file": written[q]["gguf"], "prompts": prompt_ids, "max_new": MAX_NEW} for q in types]
    started = time.time()
    proc = subprocess.run([sys.executable, "-c", LLAMA_CPP_CHILD], input=json.dumps(jobs),
                          capture_output=True, text=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"llama.cpp exited {proc.returncode}: {proc.stderr[-2000:]}")
    results = json.loads(line[len("RESULTS "):])
    summary, rows = {}, [{"prompt": p, "merged": r["text"]} for p, r in zip(LLAMA_CPP_PROMPTS, reference)]
    for qtype, per_prompt in zip(types, results):
        diffs, same, first_same = [], 0, 0
        for row, ref, got in zip(rows, reference, per_prompt):
            text = tok.decode(got["new"], skip_special_tokens=True).strip()
            row[qtype] = text
            same += text == ref["text"]
            first_same += bool(got["new"]) and got["new"][0] == ref["first_token"]
            diffs.append(float(np.abs(np.array(got["first"]) - ref["first"]).max()))
        summary[qtype] = {"greedy_identical": same, "first_token_identical": first_same,
                          "of": len(rows), "max_first_token_logit_diff": round(max(diffs), 4),
                          "gguf_bytes": os.path.getsize(written[qtype]["gguf"]),
                          "export_seconds": written[qtype]["seconds"]}
    import llama_cpp

    return {"llama_cpp_python": llama_cpp.__version__, "llama_cpp_seconds": round(time.time() - started, 1),
            "logit_scale": round(max(float(np.abs(r["first"]).max()) for r in reference), 2),
            "summary": summary, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="training steps of each short run")
    parser.add_argument("--dates", type=int, default=5, help="iso_dates validation prompts")
    parser.add_argument("--parts", nargs="+", default=["lora", "qlora"],
                        choices=["lora", "qlora", "llama_cpp"])
    parser.add_argument("--gguf_types", nargs="+", default=["f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q4_k_m"])
    parser.add_argument("--out", default="bench/results/export.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                    if line.startswith("model name")), cpu)
    report = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    report.update({"machine": {"cpu": cpu, "cores": os.cpu_count(),
                               "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
                   "max_new_tokens": MAX_NEW})
    with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp:
        work = Path(tmp)
        if "lora" in args.parts:
            report["lora"] = lora_part(args.steps, args.dates, work)
            print(json.dumps(report["lora"]["comparison"]["summary"], indent=1), flush=True)
        if "qlora" in args.parts:
            report["qlora"] = qlora_part(args.steps, args.dates, work)
            print(json.dumps(report["qlora"]["vs_4bit_model"]["summary"], indent=1), flush=True)
            print(json.dumps(report["qlora"]["base_only_4bit_vs_fp32"], indent=1), flush=True)
        if "llama_cpp" in args.parts:
            report["llama_cpp"] = llama_cpp_part(work, args.gguf_types)
            print(json.dumps(report["llama_cpp"]["summary"], indent=1), flush=True)
    Path(args.out).write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
