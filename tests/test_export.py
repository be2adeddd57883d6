"""Export round trips: the merged folder, the adapter alone and the GGUF file are loaded back by
plain transformers / peft in a separate Python process that never imports finetuning_suite, and
generate greedily what `FineTuner.generate` does.

The adapters are made to matter by setting their B matrices to random values (a fresh LoRA
adapter has B = 0 and changes nothing), so a merge that dropped the adapter would be caught.
GGUF files are written from a tiny Llama with a 1,024-token cut of the embedded tokenizer
(real BPE merges, chat template, special tokens): transformers' GGUF loader parses every token
and merge in Python, ~15 s for the full 49,152-token vocabulary, well under a second for this.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from finetuning_suite import ConfigError, FineTuner
from finetuning_suite.export import export_model
from tiny import INIT, smol_tokenizer

PROMPTS = ["What is the capital of France?", "Hello there"]
MAX_NEW = 8

# Runs in a fresh interpreter: plain transformers / peft only. Reads a list of jobs (JSON) on
# stdin, prints one JSON result per job; fails if finetuning_suite got imported.
PLAIN = textwrap.dedent('''
    import json, os, sys
    import torch
    from transformers import (AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer,
                              pipeline)

    def chat_ids(tok, prompt):
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True)
        return tok(text, add_special_tokens=False, return_tensors="pt").input_ids

    def greedy(model, tok, prompt, n, chat=True):
        ids = chat_ids(tok, prompt) if chat else tok(prompt, return_tensors="pt").input_ids
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=n, do_sample=False)
        start = 1 if model.config.is_encoder_decoder else ids.shape[1]
        return tok.decode(out[0, start:], skip_special_tokens=True).strip()

    results = []
    for job in json.load(sys.stdin):
        kind, n, prompts = job["kind"], job["max_new"], job["prompts"]
        try:
            if kind == "causal":
                tok = AutoTokenizer.from_pretrained(job["folder"])
                model = AutoModelForCausalLM.from_pretrained(job["folder"])
                r = {"texts": [greedy(model, tok, p, n, job.get("chat", True)) for p in prompts],
                     "dtype": str(next(model.parameters()).dtype),
                     "padding_side": tok.padding_side}
                if job.get("pipeline"):
                    pipe = pipeline("text-generation", model=job["folder"])
                    out = pipe([{"role": "user", "content": prompts[0]}], max_new_tokens=n,
                               do_sample=False)
                    r["pipeline"] = out[0]["generated_text"][-1]["content"].strip()
            elif kind == "seq2seq":
                tok = AutoTokenizer.from_pretrained(job["folder"])
                model = AutoModelForSeq2SeqLM.from_pretrained(job["folder"])
                r = {"texts": [greedy(model, tok, p, n, chat=False) for p in prompts]}
            elif kind == "peft":
                from peft import PeftModel
                base = AutoModelForCausalLM.from_pretrained(job["base"])
                tok = AutoTokenizer.from_pretrained(job["adapter"])
                model = PeftModel.from_pretrained(base, job["adapter"]).eval()
                r = {"texts": [greedy(model, tok, p, n) for p in prompts]}
            elif kind == "gguf":
                gdir, name = os.path.split(job["file"])
                tok = AutoTokenizer.from_pretrained(gdir, gguf_file=name)
                model = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=name,
                                                             dtype=torch.float32)
                ref_tok = AutoTokenizer.from_pretrained(job["merged"])
                ref = AutoModelForCausalLM.from_pretrained(job["merged"], dtype=torch.float32)
                r = {"texts": [greedy(model, tok, p, n) for p in prompts],
                     "merged_texts": [greedy(ref, ref_tok, p, n) for p in prompts],
                     "same_ids": all(chat_ids(tok, p).tolist() == chat_ids(ref_tok, p).tolist()
                                     for p in prompts),
                     "chat_template_same": tok.chat_template == ref_tok.chat_template,
                     "special": [tok.bos_token, tok.eos_token, tok.pad_token],
                     "tied": model.config.tie_word_embeddings}
                with torch.no_grad():
                    ids = chat_ids(ref_tok, prompts[0])
                    a, b = model(input_ids=ids).logits, ref(input_ids=ids).logits
                    r["max_logit_diff"] = (a - b).abs().max().item()
                    r["logit_scale"] = b.abs().max().item()
                    # the merged model with its matrices rounded as the file stores them
                    import gguf
                    q8 = gguf.GGMLQuantizationType.Q8_0
                    for param in ref.parameters():
                        if param.dim() < 2:
                            continue
                        if job["round"] == "q8_0" and param.shape[-1] % 32 == 0:
                            w = gguf.quants.dequantize(gguf.quants.quantize(param.numpy(), q8), q8)
                            param.copy_(torch.from_numpy(w).reshape(param.shape))
                        else:
                            param.copy_(param.half().float())
                    r["max_logit_diff_rounded"] = (a - ref(input_ids=ids).logits).abs().max().item()
                r["rounded_texts"] = [greedy(ref, ref_tok, p, n) for p in prompts]
            else:
                raise ValueError(kind)
        except Exception as exc:
            r = {"error": f"{type(exc).__name__}: {exc}"}
        results.append(r)
    assert "finetuning_suite" not in sys.modules
    print("RESULTS " + json.dumps(results))
''')


def run_plain(jobs: list[dict]) -> list[dict]:
    """Run `jobs` in a fresh interpreter without finetuning_suite; one result per job."""
    proc = subprocess.run([sys.executable, "-c", PLAIN], input=json.dumps(jobs), text=True,
                          capture_output=True, timeout=300, cwd=tempfile.gettempdir(),
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")), None)
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    results = json.loads(line[len("RESULTS "):])
    for job, result in zip(jobs, results):
        assert "error" not in result, (job, result)
    return results


def render_go_template(template: str, data: dict) -> str:
    """The subset of Go's text/template the Modelfile uses (`{{- -}}` trimming, if / else if /
    else / range / end, `.Field`, `ne .Field "text"`), to check the TEMPLATE without Ollama."""
    items = []
    for part in re.split(r"(\{\{.*?\}\})", template, flags=re.S):
        if part.startswith("{{"):
            left, right = part.startswith("{{-"), part.endswith("-}}")
            items.append(["act", part[3 if left else 2:-3 if right else -2].strip(), left, right])
        else:
            items.append(["text", part])
    for i, item in enumerate(items):
        if item[0] == "act" and item[2] and i and items[i - 1][0] == "text":
            items[i - 1][1] = items[i - 1][1].rstrip()
        if item[0] == "act" and item[3] and i + 1 < len(items) and items[i + 1][0] == "text":
            items[i + 1][1] = items[i + 1][1].lstrip()

    def parse(pos):  # -> (nodes, pos of the closing else/end action)
        nodes = []
        while pos < len(items):
            kind, body = items[pos][0], items[pos][1]
            if kind == "text":
                nodes.append(("text", body))
            elif body == "end" or body.startswith("else"):
                return nodes, pos
            elif body.startswith(("if ", "range ")):
                word, expr = body.split(" ", 1)
                branches, pos = [], pos + 1
                while True:
                    block, pos = parse(pos)
                    branches.append((expr, block))
                    close = items[pos][1]
                    if close == "end":
                        break
                    expr = close[len("else if "):] if close.startswith("else if ") else "true"
                    pos += 1
                nodes.append((word, branches))
            else:
                nodes.append(("value", body))
            pos += 1
        return nodes, pos

    def value(expr, dot):
        if expr == "true":
            return True
        if expr.startswith("ne "):
            field, text = expr[3:].split(" ", 1)
            return value(field, dot) != json.loads(text)
        return dot.get(expr[1:]) if expr.startswith(".") else None

    def run(nodes, dot):
        out = []
        for node in nodes:
            if node[0] == "text":
                out.append(node[1])
            elif node[0] == "value":
                out.append(str(value(node[1], dot)))
            elif node[0] == "range":
                for element in value(node[1][0][0], dot) or []:
                    out.append(run(node[1][0][1], element))
            else:
                out.append(next((run(block, dot) for expr, block in node[1] if value(expr, dot)), ""))
        return "".join(out)

    return run(parse(0)[0], data)


def perturb_adapter(ft, seed: int = 1, std: float = 0.5) -> None:
    """Give the LoRA B matrices random values so the adapter changes the output."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in ft.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, std)


def small_vocab_llama(path: Path, n_vocab: int = 1024, tied: bool = True) -> str:
    """A tiny Llama over the first `n_vocab` tokens of the embedded tokenizer, keeping the merges
    among them (so it is still a real byte-level BPE) and the chat template."""
    full = smol_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        full.save_pretrained(tmp)
        file = Path(tmp) / "tokenizer.json"
        spec = json.loads(file.read_text(encoding="utf-8"))
        vocab = {s: i for s, i in spec["model"]["vocab"].items() if i < n_vocab}
        merges = []
        for m in spec["model"]["merges"]:
            a, b = m.split(" ") if isinstance(m, str) else m
            if a in vocab and b in vocab and a + b in vocab:
                merges.append(m)
        spec["model"]["vocab"], spec["model"]["merges"] = vocab, merges
        spec["added_tokens"] = [t for t in spec["added_tokens"] if t["id"] < n_vocab]
        file.write_text(json.dumps(spec), encoding="utf-8")
        tok = AutoTokenizer.from_pretrained(tmp)
    assert len(tok) == n_vocab and tok.chat_template and len(merges) > 500
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=n_vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=tied, initializer_range=INIT)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def llama_ft(tiny_llama):
    ft = FineTuner(model_id=tiny_llama, device="cpu", max_length=MAX_NEW)
    base_texts = [ft.generate(p) for p in PROMPTS]
    perturb_adapter(ft)
    return ft, base_texts


@pytest.fixture(scope="module")
def small_llama(tmp_path_factory):
    ft = FineTuner(model_id=small_vocab_llama(tmp_path_factory.mktemp("small") / "llama"),
                   device="cpu", max_length=MAX_NEW)
    perturb_adapter(ft, seed=2, std=0.3)
    return ft


# -- merged and adapter round trips ------------------------------------------------------------
@pytest.fixture(scope="module")
def round_trips(llama_ft, small_llama, tiny_llama, tiny_t5, tmp_path_factory):
    """Every export the round-trip tests check, loaded back in one plain-Python process (one
    interpreter start instead of one per test)."""
    root = tmp_path_factory.mktemp("round_trips")
    ft, base_texts = llama_ft
    t5 = FineTuner(model_id=tiny_t5, device="cpu", max_length=MAX_NEW)
    t5_base = [t5.generate(p) for p in PROMPTS]
    perturb_adapter(t5, seed=3)
    out = {
        "llama": {"base": base_texts, "expected": [ft.generate(p) for p in PROMPTS],
                  "merged": export_model(ft, root / "merged"),
                  "adapter": export_model(ft, root / "adapter", merged=False)},
        "t5": {"base": t5_base, "expected": [t5.generate(p) for p in PROMPTS],
               "merged": export_model(t5, root / "t5")},
        "small": {"expected": [small_llama.generate(p) for p in PROMPTS],
                  "f16": export_model(small_llama, root / "f16", gguf="f16"),
                  "q8_0": export_model(small_llama, root / "q8", gguf="Q8_0")},
        "root": root,
    }
    common = {"prompts": PROMPTS, "max_new": MAX_NEW}
    results = run_plain([
        {"kind": "causal", "folder": out["llama"]["merged"]["folder"], "pipeline": True, **common},
        {"kind": "peft", "base": tiny_llama, "adapter": out["llama"]["adapter"]["folder"], **common},
        {"kind": "seq2seq", "folder": out["t5"]["merged"]["folder"], **common},
        *({"kind": "gguf", "file": out["small"][q]["gguf"], "merged": out["small"][q]["folder"],
           "round": q, **common} for q in ("f16", "q8_0")),
    ])
    out["llama"]["causal"], out["llama"]["peft"], out["t5"]["plain"] = results[:3]
    out["small"]["r16"], out["small"]["r8"] = results[3:]
    return out


def test_merged_and_adapter_load_without_the_package_and_match_generate(round_trips, llama_ft,
                                                                        tiny_llama):
    ft, _ = llama_ft
    llama, t5 = round_trips["llama"], round_trips["t5"]
    expected = llama["expected"]
    assert expected != llama["base"]  # the adapter changes the answers, so a lost merge shows
    assert t5["expected"] != t5["base"]

    causal = llama["causal"]
    assert causal["texts"] == expected and causal["pipeline"] == expected[0]
    assert causal["dtype"] == "torch.float32" and causal["padding_side"] == "left"
    assert llama["peft"]["texts"] == expected
    assert t5["plain"]["texts"] == t5["expected"]  # AutoModelForSeq2SeqLM

    # the live FineTuner keeps its adapter (merging happened on a copy)
    assert hasattr(ft.model, "peft_config") and [ft.generate(p) for p in PROMPTS] == expected
    merged, adapter = llama["merged"], llama["adapter"]
    folder = Path(merged["folder"])
    assert Path(merged["model"]) == folder / "model.safetensors" and Path(merged["model"]).is_file()
    assert not (folder / "adapter_config.json").exists()
    assert (folder / "chat_template.jinja").read_text() == ft.tokenizer.chat_template
    config = json.loads((Path(adapter["folder"]) / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]).resolve() == Path(tiny_llama).resolve()
    assert Path(adapter["adapter"]).is_file()
    assert not list(round_trips["root"].glob("*.tmp-*"))  # the staging folders are gone


def test_full_fine_tuning_exports_the_model_and_has_no_adapter(tiny_llama, tmp_path):
    ft = FineTuner(model_id=tiny_llama, device="cpu", max_length=MAX_NEW, method="full")
    with torch.no_grad():
        ft.model.model.norm.weight.mul_(-1.5)  # a change training could have made
    expected = [ft.generate(p) for p in PROMPTS]
    written = export_model(ft, tmp_path / "full")
    model = AutoModelForCausalLM.from_pretrained(written["folder"])
    assert torch.equal(model.model.norm.weight, ft.model.model.norm.weight)
    assert [ft.generate(p) for p in PROMPTS] == expected  # unchanged by the export
    with pytest.raises(ConfigError, match="method='full'.*no adapter"):
        export_model(ft, tmp_path / "adapter", merged=False)
    assert not (tmp_path / "adapter").exists()


def test_qlora_merge_dequantizes_the_4bit_base(tiny_gpt2, tmp_path):
    """A 4-bit base is not merged into (that would re-quantize W + BA): its NF4 weights are
    dequantized into a float32 copy of the base and the adapter merged there. With float32
    compute the 4-bit model computes exactly that, so the merged model matches it; merging into
    the original float32 weights instead (quantized_base="original") does not."""
    import bitsandbytes as bnb
    from peft import PeftModel

    from finetuning_suite.export.merged import merged_model

    ft = FineTuner(model_id=tiny_gpt2, device="cpu", max_length=MAX_NEW, quantize=True,
                   quantization_config={"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                                        "bnb_4bit_compute_dtype": "float32"})
    assert ft._bits() == 4
    perturb_adapter(ft, std=0.2)
    prompts = ["Once upon a time", "The capital of France is"]
    expected = [ft.generate(p) for p in prompts]
    written = export_model(ft, tmp_path / "merged")
    adapter = export_model(ft, tmp_path / "adapter", merged=False)
    assert [ft.generate(p) for p in prompts] == expected  # the live 4-bit model is untouched
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in ft.model.modules())

    assert "quantization_config" not in json.loads(Path(written["config"]).read_text())
    merged = AutoModelForCausalLM.from_pretrained(written["folder"]).eval()
    tok = AutoTokenizer.from_pretrained(written["folder"])
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    texts = []
    for p in prompts:
        ids = tok(p, return_tensors="pt").input_ids
        out = merged.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                              max_new_tokens=MAX_NEW, do_sample=False)
        texts.append(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
    assert texts == expected

    ids = torch.tensor([[11, 502, 77, 1290, 42, 7, 300]])
    original = merged_model(ft, quantized_base="original")
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_gpt2),
                                          adapter["folder"]).eval()
    ft.model.eval()  # no dropout
    with torch.no_grad():
        four_bit = ft.model(input_ids=ids).logits
        got = merged(input_ids=ids).logits
        from_original = original(input_ids=ids).logits
        unmerged_original = reference(input_ids=ids).logits
    assert torch.allclose(got, four_bit, atol=1e-4), (got - four_bit).abs().max()
    assert torch.allclose(from_original, unmerged_original, atol=1e-4)  # the adapter folder agrees
    assert (from_original - four_bit).abs().max() > 100 * (got - four_bit).abs().max()


# -- GGUF ---------------------------------------------------------------------------------------
def test_gguf_f16_and_q8_0_round_trip_through_transformers(round_trips, small_llama):
    ft, small = small_llama, round_trips["small"]
    f16, q8, r16, r8 = small["f16"], small["q8_0"], small["r16"], small["r8"]
    assert Path(f16["gguf"]).parent == Path(f16["folder"]) / "gguf"
    assert Path(f16["gguf"]).name == "f16-f16.gguf" and Path(q8["gguf"]).name == "q8-q8_0.gguf"
    assert r16["merged_texts"] == small["expected"]
    # Each file holds the merged weights rounded as its type says (float16; Q8_0 blocks), and
    # the GGUF model computes exactly what the merged model with those rounded weights computes:
    # the names, the q/k permutation, the tokenizer and the hyperparameters all came through.
    # (On this random model the rounding alone can flip a near-tied greedy choice; answers on the
    # embedded model are compared in the slow test and bench/results/export.md.)
    for r in (r16, r8):
        assert r["max_logit_diff_rounded"] < 1e-4 and r["texts"] == r["rounded_texts"]
        assert r["same_ids"] and r["chat_template_same"] and r["tied"]
    assert r16["texts"][0] == small["expected"][0]
    assert r16["special"] == [ft.tokenizer.bos_token, ft.tokenizer.eos_token, ft.tokenizer.pad_token]
    assert r16["max_logit_diff"] < 0.02 * r16["logit_scale"]
    assert Path(q8["gguf"]).stat().st_size < Path(f16["gguf"]).stat().st_size


def test_gguf_tensors_metadata_and_modelfile(small_llama, tmp_path):
    import gguf

    ft = small_llama
    written = export_model(ft, tmp_path / "my model!", gguf="q8_0")
    reader = gguf.GGUFReader(written["gguf"])
    fields = {k: f.contents() for k, f in reader.fields.items()
              if k not in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type")}
    cfg = ft.model.config
    assert fields["general.architecture"] == "llama"
    assert fields["llama.embedding_length"] == 32 and fields["llama.block_count"] == 2
    assert fields["llama.attention.head_count"] == 4 and fields["llama.attention.head_count_kv"] == 2
    assert fields["llama.feed_forward_length"] == 64 and fields["llama.context_length"] == 256
    assert fields["llama.rope.freq_base"] == pytest.approx(cfg.rope_parameters["rope_theta"])
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg.rms_norm_eps)
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.ggml.eos_token_id"] == ft.tokenizer.eos_token_id
    assert fields["tokenizer.chat_template"] == ft.tokenizer.chat_template
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == 1024
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["token_embd.weight"] == "Q8_0" and types["blk.0.attn_q.weight"] == "Q8_0"
    assert types["blk.0.attn_norm.weight"] == "F32" and "output.weight" not in types  # tied

    text = Path(written["modelfile"]).read_text()
    assert f"FROM ./{Path(written['gguf']).name}" in text and Path(written["gguf"]).name == "my-model-q8_0.gguf"
    assert 'PARAMETER stop "<|im_end|>"' in text and "PARAMETER temperature 0" in text
    assert "<|im_start|>{{ .Role }}" in text and 'SYSTEM """You are a helpful AI assistant' in text
    # Ollama fills .System with the conversation's system message, else the SYSTEM line; the Go
    # template then renders what the training chat template renders.
    template = re.search(r'TEMPLATE """(.*?)"""', text, re.S).group(1)
    default = re.search(r'SYSTEM """(.*?)"""', text, re.S).group(1)
    chats = [[{"role": "user", "content": "Hi"}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
             [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
              {"role": "user", "content": "2+2?"}]]
    for chat in chats:
        want = ft.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        system = next((m["content"] for m in chat if m["role"] == "system"), default)
        go = [{"Role": m["role"], "Content": m["content"]} for m in chat]
        for messages in (go, [m for m in go if m["Role"] != "system"]):
            assert render_go_template(template, {"System": system, "Messages": messages}) == want
    assert render_go_template(template, {"System": "", "Messages": [], "Prompt": "Hi"}) == \
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_query_key_permutation_is_what_transformers_undoes():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    from finetuning_suite.export.gguf_arch import permute_rotary

    w = torch.randn(6 * 8, 16).numpy()  # 6 kv heads of size 8
    back = LlamaTensorProcessor(config={})._reverse_permute_weights(permute_rotary(w, 12, 6), 12, 6)
    assert (back == w).all() and not (permute_rotary(w, 12, 6) == w).all()


# -- refusals and atomic writes ----------------------------------------------------------------
def test_bad_arguments_are_one_config_error_and_nothing_is_written(llama_ft, tmp_path):
    ft, _ = llama_ft
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ConfigError) as info:
        export_model(ft, a_file, gguf="q4_k", merged="yes")
    message = str(info.value)
    assert "3 invalid arguments" in message and "is an existing file" in message
    assert ("gguf='q4_k': must be one of ['f16', 'bf16', 'q8_0', 'q4_k_m', 'q5_k_m', 'q6_k']"
            in message and "merged='yes'" in message)
    with pytest.raises(ConfigError, match="a GGUF file holds merged weights"):
        export_model(ft, tmp_path / "x", merged=False, gguf="f16")
    with pytest.raises(ConfigError, match="must be the folder to write"):
        export_model(ft, None)
    with pytest.raises(ConfigError, match="holds the base model this model was loaded from"):
        export_model(ft, ft.source.path, overwrite=True)
    assert not (tmp_path / "x").exists() and a_file.read_text() == "x"


def test_gguf_refuses_other_architectures_and_says_merged_works(tiny_gpt2, tmp_path):
    ft = FineTuner(model_id=tiny_gpt2, device="cpu", max_length=MAX_NEW)
    with pytest.raises(ConfigError) as info:
        export_model(ft, tmp_path / "g", gguf="f16")
    message = str(info.value)
    assert "gpt2 (GPT2LMHeadModel)" in message and "merged export (gguf=None) works" in message
    for name in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                 "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM"):
        assert name in message  # what does work
    assert not (tmp_path / "g").exists()


def test_gguf_refuses_what_llama_cpp_computes_differently():
    """A Gemma whose query scale is not the one llama.cpp derives from the model size, and
    rope scalings the writer does not carry, are refused before anything is loaded or written."""
    from transformers import Gemma2Config

    from finetuning_suite.export.gguf_arch import problems

    gemma = Gemma2Config(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, head_dim=16,
                         query_pre_attn_scalar=256)
    (found,) = problems(gemma)
    assert found[1] == "query_pre_attn_scalar=256" and "0.25" in found[2] and "0.0625" in found[2]
    gemma.query_pre_attn_scalar = 16  # 16 ** -0.5 = 1 / sqrt(head_dim): what llama.cpp uses
    assert problems(gemma) == []
    llama = LlamaConfig(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4})
    assert "rope_type='yarn'" in [p[1] for p in problems(llama)]


def test_k_quants_without_llama_cpp_are_refused_with_the_extra_to_install(monkeypatch, tmp_path):
    import finetuning_suite.export.api as api
    from finetuning_suite.export import check_export_arguments

    monkeypatch.setattr(api, "llama_cpp_installed", lambda: False)
    with pytest.raises(ConfigError) as info:
        check_export_arguments(tmp_path / "out", gguf="q4_k_m")
    assert "finetuning_suite[gguf]" in str(info.value) and "-DGGML_NATIVE=OFF" in str(info.value)
    for qtype in ("f16", "bf16", "q8_0"):  # our own writer: nothing more needed
        check_export_arguments(tmp_path / "out", gguf=qtype)


def test_existing_folder_is_refused_then_replaced_entirely(llama_ft, tmp_path, monkeypatch):
    ft, _ = llama_ft
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(ConfigError, match="already holds files; pass overwrite=True"):
        export_model(ft, out)

    import finetuning_suite.export.api as api

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(api, "save_merged", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_model(ft, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]  # untouched by the failure
    monkeypatch.undo()

    written = export_model(ft, out, overwrite=True)
    assert not (out / "old.txt").exists() and Path(written["model"]).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .tmp-/.old- leftovers
    (tmp_path / "empty").mkdir()
    assert Path(export_model(ft, tmp_path / "empty")["config"]).is_file()  # empty: no overwrite needed


def test_cli_export(tiny_llama, tmp_path, capsys):
    from finetuning_suite.cli.main import main

    assert main(["export", "--model_id", tiny_llama, "--max_length", "4"]) == 2
    assert "--export_dir is required" in capsys.readouterr().err
    assert main(["export", "--model_id", tiny_llama, "--export_dir", str(tmp_path / "o"),
                 "--gguf", "q4"]) == 2
    assert "gguf='q4': must be one of" in capsys.readouterr().err
    out = tmp_path / "adapter"
    assert main(["export", "--model_id", tiny_llama, "--export_dir", str(out), "--merged", "false"]) == 0
    printed = capsys.readouterr().out
    assert f"adapter_config  {out / 'adapter_config.json'}" in printed
    assert (out / "adapter_model.safetensors").is_file()


# -- the embedded model --------------------------------------------------------------------------
@pytest.mark.slow
def test_embedded_gguf_f16_equals_the_merged_model(embedded, tmp_path):
    ft = embedded  # the session's one FineTuner on the embedded model (read only here)
    prompt = "What is the capital of France?"
    expected = ft.generate(prompt, 16)
    written = export_model(ft, tmp_path / "smollm2", gguf="f16")
    (result,) = run_plain([{"kind": "gguf", "file": written["gguf"], "merged": written["folder"],
                            "prompts": [prompt], "max_new": 16, "round": "f16"}])
    assert result["merged_texts"] == [expected] and result["texts"] == [expected]
    assert "Paris" in expected
    assert result["same_ids"] and result["chat_template_same"] and result["tied"]
    assert result["max_logit_diff_rounded"] < 1e-3  # the file is the merged model in float16
