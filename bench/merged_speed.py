"""Generation speed of the base model, the same model with a LoRA adapter (unmerged), and the
adapter merged in (what `FineTuner.export(merged=True)` writes): merged must cost nothing.

    .venv/bin/python bench/merged_speed.py            # results in bench/results/merged_speed.{json,md}

Embedded SmolLM2-135M-Instruct, fp32 on the CPU, the package's default LoRA (r=16, alpha=32,
every linear layer) with random non-zero B so the adapter is really applied; a batch of 8 chat
prompts and a single prompt, greedy, exactly `--new-tokens` new tokens each (EOS suppressed via
`min_new_tokens`, so every variant does the same work). Best of `--rounds` runs, interleaved.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

PROMPTS = ["What is the capital of France?", "Name three colours.", "Write a haiku about rain.",
           "How do plants make food?", "Give me a tip for studying.", "What is 12 times 7?",
           "Describe a cat in one sentence.", "Why is the sky blue?"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "merged_speed"))
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import copy

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetuning_suite.model.embedded import embedded_model_dir

    path = str(embedded_model_dir())
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    torch.manual_seed(0)
    lora = get_peft_model(copy.deepcopy(base), LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                          init_lora_weights=False)).eval()
    merged = copy.deepcopy(lora).merge_and_unload().eval()
    models = {"base": base, "lora_unmerged": lora, "merged": merged}

    def encode(prompts):
        texts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                         add_generation_prompt=True) for q in prompts]
        return tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)

    batches = {"batch8": encode(PROMPTS), "single": encode(PROMPTS[:1])}
    best: dict = {}
    outputs: dict = {}
    for _ in range(args.rounds):
        for bname, enc in batches.items():
            for mname, model in models.items():
                start = time.perf_counter()
                with torch.inference_mode():
                    out = model.generate(**enc, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                         do_sample=False, pad_token_id=tok.pad_token_id)
                elapsed = time.perf_counter() - start
                key = (bname, mname)
                best[key] = min(best.get(key, float("inf")), elapsed)
                outputs[key] = out[:, enc["input_ids"].shape[1]:]
    rows = []
    for bname, enc in batches.items():
        n = enc["input_ids"].shape[0] * args.new_tokens
        base_rate = n / best[(bname, "base")]
        for mname in models:
            rate = n / best[(bname, mname)]
            rows.append({"batch": bname, "model": mname, "seconds": round(best[(bname, mname)], 3),
                         "tokens_per_s": round(rate, 2), "vs_base": round(rate / base_rate, 4),
                         "same_tokens_as_unmerged": bool(torch.equal(outputs[(bname, mname)],
                                                                     outputs[(bname, "lora_unmerged")]))})
    report = {"threads": torch.get_num_threads(), "cpus": os.cpu_count(), "new_tokens": args.new_tokens,
              "rounds": args.rounds, "load_avg": os.getloadavg(), "rows": rows,
              "created": time.strftime("%Y-%m-%d %H:%M")}
    Path(args.out + ".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Merged vs unmerged adapter: generation speed ({report['created']})", "",
             f"Embedded SmolLM2-135M-Instruct, fp32, {report['threads']} threads on {report['cpus']} CPUs, "
             f"load average {report['load_avg'][0]:.2f}; greedy, exactly {args.new_tokens} new tokens per "
             f"prompt, best of {args.rounds} interleaved rounds. LoRA r=16 on every linear layer.", "",
             "| batch | model | seconds | tokens/s | vs base | same tokens as unmerged |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['model']} | {r['seconds']} | {r['tokens_per_s']} | "
                     f"{r['vs_base']:.1%} | {r['same_tokens_as_unmerged']} |")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
