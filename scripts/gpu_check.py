"""CUDA path check: 4-bit load, generate and LoRA training steps on a GPU, with models built from
configs (the embedded model's 98 MB GGUF cannot travel to the device machine); and packing's
parity there: a packed batch's loss and gradients against the examples run one by one, with the
attention packing picks on that device (flash-attention's varlen kernels when the model runs
flash_attention_2, else packed_sdpa).

    FINETUNING_SUITE_TEST_TOKENIZER=<tokenizer folder> python scripts/gpu_check.py
    python scripts/gpu_check.py --packing-only        # the packing check alone (CPU without CUDA)

Prints one JSON line per check and exits non-zero if any check fails.
"""
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from tiny import smol_tokenizer  # noqa: E402

from finetuning_suite import DefaultTrainerConfig, FineTuner  # noqa: E402


def build(kind: str, path: Path) -> str:
    tok = smol_tokenizer()
    torch.manual_seed(0)
    if kind == "llama":  # SmolLM2-like shapes, fewer layers
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tok), hidden_size=576, intermediate_size=1536, num_hidden_layers=4,
            num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True))
    else:
        tok.chat_template = None
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=256, n_layer=4, n_head=4,
                                           n_positions=1024, bos_token_id=tok.bos_token_id,
                                           eos_token_id=tok.eos_token_id))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def check(kind: str, root: Path) -> dict:
    import bitsandbytes as bnb

    started = time.time()
    path = build(kind, root / kind)
    ft = FineTuner(path, quantize=True, max_length=12)  # device left to the default
    layers = [m for m in ft.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    text = ft("Once upon a time")
    ft.model.train()
    trainable = [p for p in ft.model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    frozen = {n: p.detach().clone() for n, p in ft.model.named_parameters() if "lora_" not in n and p.dtype.is_floating_point}
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    enc = ft.tokenizer(["The quick brown fox jumps over the lazy dog."], return_tensors="pt").to("cuda")
    losses = []
    for _ in range(3):
        loss = ft.model(**enc, labels=enc["input_ids"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(round(loss.item(), 4))
    moved = sum(not torch.equal(b, p.detach()) for b, p in zip(before, trainable))
    base_same = all(torch.equal(v, dict(ft.model.named_parameters())[n].detach()) for n, v in frozen.items())
    # and through the Trainer, end to end, on the built-in chat data
    cfg = DefaultTrainerConfig(max_steps=20, per_device_train_batch_size=8, logging_steps=5,
                               save_strategy="no", disable_tqdm=True)
    ft2 = FineTuner(path, quantize=True, dataset_name="dialogue", trainer_config=cfg, max_length=12)
    metrics = ft2.train(str(root / f"{kind}_run"))
    return {
        "check": f"cuda 4-bit {kind}", "device": ft.device, "gpu": torch.cuda.get_device_name(0),
        "linear4bit_layers": len(layers), "weight_device": str(layers[0].weight.device),
        "weight_dtype": str(layers[0].weight.dtype), "generated": text,
        "lora_step_losses": losses, "lora_tensors_moved": f"{moved}/{len(trainable)}",
        "base_unchanged": base_same, "trainer_bf16": bool(ft2.trainer_config.training_arguments(
            device="cuda").bf16), "trainer_train_loss": round(metrics["train_loss"], 4),
        "trainer_eval_loss": round(metrics.get("eval_loss", float("nan")), 4),
        "peak_mem_MB": round(torch.cuda.max_memory_allocated() / 2**20),
        "seconds": round(time.time() - started, 1),
        "ok": bool(layers and layers[0].weight.device.type == "cuda" and moved == len(trainable)
                   and base_same and losses[-1] < losses[0]),
    }


def packing_check(root: Path, device: str) -> dict:
    """Packed vs one-by-one loss and gradients on the llama shapes above, fp32, on `device`."""
    from finetuning_suite.train import packing

    started = time.time()
    path = build("llama", root / "llama_packing")
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
    implementation = packing.packed_implementation(model)
    g = torch.Generator().manual_seed(1)
    rows = []
    for n in (5, 17, 9, 30, 200):
        ids = torch.randint(1, model.config.vocab_size, (n,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * (n // 3) + ids[n // 3:]})
    n_items = sum(sum(t != -100 for t in r["labels"][1:]) for r in rows)

    def grads():
        out = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return out
    loss0 = 0.0
    for r in rows:
        out = model(input_ids=torch.tensor([r["input_ids"]], device=device),
                    labels=torch.tensor([r["labels"]], device=device), num_items_in_batch=n_items, use_cache=False)
        out.loss.backward()
        loss0 += out.loss.item()
    g0 = grads()
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in packing.packing_collator()(rows).items()}
    with packing.attention(model, implementation):
        out = model(**batch, num_items_in_batch=n_items, use_cache=False)
        out.loss.backward()
    g1 = grads()
    worst = max(float((g0[n] - g1[n]).abs().max()) for n in g0)
    return {"check": f"packing parity on {device}", "attention": implementation,
            "loss_unpacked": round(loss0, 6), "loss_packed": round(out.loss.item(), 6),
            "max_grad_diff": worst, "seconds": round(time.time() - started, 1),
            "ok": abs(loss0 - out.loss.item()) <= 1e-4 * max(1.0, abs(loss0)) and worst <= 1e-4}


def main() -> int:
    cuda = torch.cuda.is_available()
    print(json.dumps({"torch": torch.__version__, "cuda": cuda}), flush=True)
    root = Path(tempfile.mkdtemp())
    ok = True
    checks = [] if "--packing-only" in sys.argv else [lambda: check("llama", root), lambda: check("gpt2", root)]
    checks.append(lambda: packing_check(root, "cuda" if cuda else "cpu"))
    for run in checks:
        result = run()
        ok &= result["ok"]
        print(json.dumps(result), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
