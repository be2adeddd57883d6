"""Generation and server throughput on the embedded model (CPU): tokens per second for

- **single**: `generate_batch([prompt])` for each of 8 prompts, one after another;
- **batch 8**: the same 8 prompts in one `generate_batch` call;
- **server, 1 client**: `finetune serve`'s app under uvicorn on localhost, one `openai` client
  sending the 8 prompts `--rounds` times, one request at a time;
- **server, 8 clients**: 8 clients (threads) at once, client i sending prompt i `--rounds` times:
  the same requests as the single client, concurrently (the engine batches them).

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 .venv/bin/python bench/serve.py [--max-tokens 64]
        [--rounds 2] [--model_id PATH] [--quick] [--out bench/results/serve.json]

Greedy decoding, chat template, open-ended prompts (answers run to the limit, so every request
generates about the same number of tokens). Targets (issue 8): batch 8 >= 4x single; server with
8 clients >= 3x one client. The answers are compared too: batch 8 and the server must give the
single-prompt text. `--quick` (with a tiny `--model_id`) checks the script in seconds; its
numbers mean nothing. Writes `--out` (JSON) and the same name with `.md`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from finetuning_suite import DefaultInferenceHandler, FineTuner  # noqa: E402

PROMPTS = [  # open-ended: the embedded model writes well past 64 tokens for each
    "Explain how a rainbow forms.", "Why do we have seasons on Earth?",
    "Describe a good way to learn a new language.", "Give some tips for sleeping better.",
    "Describe the water cycle.", "What should I pack for a weekend hiking trip?",
    "How do plants make their food?", "What are the benefits of reading books?",
]
MODEL_NAME = "bench"


def machine() -> dict:
    info = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket"):
                info[key.strip()] = value.strip()
    except (OSError, subprocess.CalledProcessError):
        info["Model name"] = platform.processor()
    return {"cpu": info.get("Model name"), "cpus": info.get("CPU(s)", os.cpu_count()),
            "threads_per_core": info.get("Thread(s) per core"),
            "cores_per_socket": info.get("Core(s) per socket"),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "dtype": "float32", "device": "cpu"}


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bench_generation(ft, max_tokens: int) -> dict:
    handler = DefaultInferenceHandler()
    args = (ft.model, ft.tokenizer, "cpu", max_tokens)
    singles, seconds = [], 0.0
    for p in PROMPTS:
        s, (g,) = timed(lambda p=p: handler.generate_batch([p], *args))
        singles.append(g)
        seconds += s
    single_tokens = sum(g.new_tokens for g in singles)
    b_seconds, batch = timed(lambda: handler.generate_batch(PROMPTS, *args))
    batch_tokens = sum(g.new_tokens for g in batch)
    single = {"seconds": seconds, "new_tokens": single_tokens, "tokens_per_s": single_tokens / seconds}
    batched = {"seconds": b_seconds, "new_tokens": batch_tokens, "tokens_per_s": batch_tokens / b_seconds,
               "same_text_as_single": sum(a.text == b.text for a, b in zip(singles, batch))}
    print(f"single:  {seconds:6.1f} s, {single_tokens} tokens, {single['tokens_per_s']:.1f} tok/s", flush=True)
    print(f"batch 8: {b_seconds:6.1f} s, {batch_tokens} tokens, {batched['tokens_per_s']:.1f} tok/s "
          f"(x{batched['tokens_per_s'] / single['tokens_per_s']:.2f}), same text "
          f"{batched['same_text_as_single']}/{len(PROMPTS)}", flush=True)
    return {"single": single, "batch8": batched, "texts": [g.text for g in singles]}


def serve(app):
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return server, thread, sock.getsockname()[1]


def bench_server(ft, max_tokens: int, rounds: int, texts: list[str]) -> dict:
    import openai

    from finetuning_suite.serve import create_app

    app = create_app(ft, model_name=MODEL_NAME, api_key="bench", max_tokens_limit=max(1024, max_tokens))
    server, thread, port = serve(app)
    url = f"http://127.0.0.1:{port}/v1"
    engine = app.state.engine

    def ask(client, i):
        reply = client.chat.completions.create(model=MODEL_NAME, max_tokens=max_tokens,
                                               messages=[{"role": "user", "content": PROMPTS[i]}])
        return i, reply.choices[0].message.content, reply.usage.completion_tokens

    def client():
        return openai.OpenAI(base_url=url, api_key="bench", max_retries=0, timeout=3600)

    results = {}
    try:
        ask(client(), 0)  # warm-up
        one = client()
        batches0 = engine.stats.batches
        s, answers = timed(lambda: [ask(one, i) for _ in range(rounds) for i in range(len(PROMPTS))])
        results["clients_1"] = _server_entry(s, answers, texts, engine.stats.batches - batches0)

        clients = [client() for _ in PROMPTS]

        def run_client(i):
            return [ask(clients[i], i) for _ in range(rounds)]

        batches0 = engine.stats.batches
        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            s, answers = timed(lambda: [a for r in pool.map(run_client, range(len(PROMPTS))) for a in r])
        results["clients_8"] = _server_entry(s, answers, texts, engine.stats.batches - batches0)
        results["clients_8"]["largest_batch"] = engine.stats.largest_batch
        for name in ("clients_1", "clients_8"):
            r = results[name]
            print(f"server, {name.split('_')[1]} client(s): {r['seconds']:6.1f} s, {r['requests']} requests, "
                  f"{r['new_tokens']} tokens, {r['tokens_per_s']:.1f} tok/s, {r['generate_calls']} "
                  f"generate calls, same text {r['same_text_as_single']}/{r['requests']}", flush=True)
    finally:
        server.should_exit = True
        thread.join(60)
    return results


def _server_entry(seconds, answers, texts, calls) -> dict:
    tokens = sum(n for _, _, n in answers)
    return {"seconds": seconds, "requests": len(answers), "new_tokens": tokens,
            "tokens_per_s": tokens / seconds, "generate_calls": calls,
            "same_text_as_single": sum(text == texts[i] for i, text, _ in answers)}


def write_markdown(path: Path, r: dict) -> None:
    m, g, sv = r["machine"], r["generation"], r["server"]
    ratio = r["ratios"]
    lines = [
        "# Generation and server throughput",
        "",
        f"`bench/serve.py`{' --quick (a tiny model: the numbers mean nothing)' if r['quick'] else ''}, "
        f"model `{r['model']}`, greedy, chat template, max_tokens {r['max_tokens']}, 8 open-ended "
        f"prompts; server: {r['rounds']} round(s) of the 8 prompts per measurement.",
        "",
        f"Machine: {m['cpu']}, {m['cpus']} CPUs ({m['threads_per_core']} thread(s) per core), "
        f"torch {m['torch']} with {m['torch_threads']} threads, Python {m['python']}, fp32. "
        f"Load average before: {r['loadavg_before'][0]:.2f}, after: {r['loadavg_after'][0]:.2f}.",
        "",
        "| measurement | seconds | new tokens | tokens/s | vs baseline | target | same text as single |",
        "|---|---|---|---|---|---|---|",
        f"| single prompt x8 | {g['single']['seconds']:.1f} | {g['single']['new_tokens']} | "
        f"{g['single']['tokens_per_s']:.1f} | 1.00x | | |",
        f"| batch of 8 (one generate_batch) | {g['batch8']['seconds']:.1f} | {g['batch8']['new_tokens']} | "
        f"{g['batch8']['tokens_per_s']:.1f} | **{ratio['batch8_vs_single']:.2f}x** | >= 4x "
        f"({'met' if ratio['batch8_vs_single'] >= 4 else 'not met'}) | {g['batch8']['same_text_as_single']}/8 |",
        f"| server, 1 client | {sv['clients_1']['seconds']:.1f} | {sv['clients_1']['new_tokens']} | "
        f"{sv['clients_1']['tokens_per_s']:.1f} | 1.00x | | {sv['clients_1']['same_text_as_single']}/"
        f"{sv['clients_1']['requests']} |",
        f"| server, 8 clients | {sv['clients_8']['seconds']:.1f} | {sv['clients_8']['new_tokens']} | "
        f"{sv['clients_8']['tokens_per_s']:.1f} | **{ratio['server8_vs_server1']:.2f}x** | >= 3x "
        f"({'met' if ratio['server8_vs_server1'] >= 3 else 'not met'}) | "
        f"{sv['clients_8']['same_text_as_single']}/{sv['clients_8']['requests']} |",
        "",
        f"The 8-client run took {sv['clients_8']['generate_calls']} generate calls for "
        f"{sv['clients_8']['requests']} requests (the 1-client run: {sv['clients_1']['generate_calls']}).",
        "",
    ]
    path.write_text("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_id", default=None, help="Empty: the embedded model.")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="8 new tokens, 1 round (a smoke test).")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "serve.json"))
    args = parser.parse_args()
    if args.quick:
        args.max_tokens, args.rounds = 8, 1
    load_before = os.getloadavg()
    ft = FineTuner(model_id=args.model_id, device="cpu", max_length=args.max_tokens)
    ft.generate("Hi", max_length=4)  # warm-up
    results = {"machine": machine(), "model": args.model_id or "embedded SmolLM2-135M-Instruct",
               "quick": args.quick, "max_tokens": args.max_tokens, "rounds": args.rounds,
               "prompts": PROMPTS, "loadavg_before": load_before}
    generation = bench_generation(ft, args.max_tokens)
    texts = generation.pop("texts")
    results["generation"] = generation
    results["server"] = bench_server(ft, args.max_tokens, args.rounds, texts)
    results["ratios"] = {
        "batch8_vs_single": generation["batch8"]["tokens_per_s"] / generation["single"]["tokens_per_s"],
        "server8_vs_server1": results["server"]["clients_8"]["tokens_per_s"]
        / results["server"]["clients_1"]["tokens_per_s"]}
    results["targets_met"] = {"batch8_vs_single>=4": results["ratios"]["batch8_vs_single"] >= 4,
                              "server8_vs_server1>=3": results["ratios"]["server8_vs_server1"] >= 3}
    results["loadavg_after"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(out.with_suffix(".md"), results)
    print(json.dumps(results["ratios"]), f"\nwrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
