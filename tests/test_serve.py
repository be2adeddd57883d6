"""`finetune serve`: the OpenAI-compatible server, driven by the official `openai` client (and
raw HTTP for malformed requests) against a real uvicorn server on localhost, over a tiny Llama
with the embedded model's tokenizer and chat template. Plus the per-row limits of
`generate_batch` that batching relies on, the engine's queue bound and the CLI wiring."""
from __future__ import annotations

import http.client
import json
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

from finetuning_suite import DefaultInferenceHandler, FineTuner  # noqa: E402
from finetuning_suite.serve import create_app  # noqa: E402
from finetuning_suite.serve.engine import Engine, Job, QueueFull  # noqa: E402

KEY = "test-key-123"
MODEL = "tiny"
MAX_BODY = 20_000


@contextmanager
def serving(app):
    """Run `app` under uvicorn on a free localhost port in a background thread."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="module")
def ft(tiny_llama):
    return FineTuner(model_id=tiny_llama, device="cpu", max_length=16)


@pytest.fixture(scope="module")
def server(ft):
    app = create_app(ft, model_name=MODEL, api_key=KEY, max_tokens_limit=64, max_body_bytes=MAX_BODY)
    with serving(app) as port:
        yield {"app": app, "port": port, "url": f"http://127.0.0.1:{port}/v1"}


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server["url"], api_key=KEY, max_retries=0, timeout=60)


def raw(server, method: str, path: str, body=None, *, key: str | None = KEY, headers=None,
        chunked: bool = False):
    """(status, parsed JSON body) of one raw HTTP request."""
    conn = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=60)
    sent = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    if chunked:
        data = body
        body = iter([data[i:i + 4096] for i in range(0, len(data), 4096)])
    try:
        conn.request(method, path, body=body, headers=sent, encode_chunked=chunked)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def assert_openai_error(body, code=None):
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code


def chat(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def direct(ft, prompt, max_tokens, *, chat_template=True, stop=None):
    """The answer the package's generation path gives for `prompt`, alone (greedy)."""
    handler = DefaultInferenceHandler() if chat_template else \
        DefaultInferenceHandler(use_chat_template=False, strip=False)
    return handler.generate_batch([prompt], ft.model, ft.tokenizer, "cpu", max_tokens, stop=stop)[0]


# -- the endpoints ---------------------------------------------------------------------------------
def test_models_lists_the_served_model(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    status, body = raw(server, "GET", "/v1/models/other")
    assert status == 404 and body["error"]["code"] == "model_not_found"


def test_chat_completion_is_the_generation_paths_answer_with_usage(client, ft):
    messages = [{"role": "system", "content": "Be brief."}, *chat("What is the capital of France?")]
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12)
    expected = direct(ft, messages, 12)
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and reply.model == MODEL and reply.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and choice.message.content == expected.text
    rendered = ft.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_tokens = len(ft.tokenizer(rendered, add_special_tokens=False)["input_ids"])
    assert reply.usage.prompt_tokens == prompt_tokens == expected.prompt_tokens
    assert reply.usage.completion_tokens == expected.new_tokens
    assert reply.usage.total_tokens == prompt_tokens + expected.new_tokens
    assert choice.finish_reason == ("stop" if expected.finished_with_eos else "length")
    if choice.finish_reason == "length":
        assert reply.usage.completion_tokens == 12


def test_chat_default_max_tokens_is_the_models_max_length(client, ft):
    reply = client.chat.completions.create(model=MODEL, messages=chat("Hello there"))
    assert reply.choices[0].message.content == direct(ft, chat("Hello there"), 16).text
    assert reply.usage.completion_tokens <= 16


def test_completion_uses_the_raw_prompt(client, ft):
    prompt = "The capital of France is"
    reply = client.completions.create(model=MODEL, prompt=prompt, max_tokens=7)
    expected = direct(ft, prompt, 7, chat_template=False)
    assert reply.object == "text_completion"
    assert reply.choices[0].text == expected.text
    assert reply.usage.prompt_tokens == len(ft.tokenizer(prompt)["input_ids"]) == expected.prompt_tokens
    assert reply.usage.completion_tokens == expected.new_tokens
    assert expected.text != direct(ft, prompt, 7).text  # the chat template would change it
    # several prompts: one choice each, in order (answered as one batch)
    prompts = [prompt, "Once upon a time"]
    reply = client.completions.create(model=MODEL, prompt=prompts, max_tokens=5)
    assert [c.index for c in reply.choices] == [0, 1]
    assert [c.text for c in reply.choices] == [direct(ft, p, 5, chat_template=False).text for p in prompts]


def test_streaming_chat_joins_to_the_answer(client):
    messages = chat("Tell me about the sea.")
    full = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=14)
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=14,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # really streamed
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == full.usage


def test_streaming_completion_joins_to_the_answer_and_ends_with_done(client, server):
    full = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=10)
    chunks = list(client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=10,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks) == full.choices[0].text
    assert chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason
    # the wire format: server-sent events, `data: {json}` each, `data: [DONE]` last
    conn = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=60)
    conn.request("POST", "/v1/completions", json.dumps(
        {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 4, "stream": True}),
        {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("content-type").startswith("text/event-stream")
    events = [e for e in response.read().decode().split("\n\n") if e]
    conn.close()
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "text_completion"


def test_stop_sequences_cut_the_answer(client, ft):
    messages = chat("What is the capital of France?")
    full = direct(ft, messages, 16).text
    word = full.split()[2]
    expected = full[:full.index(word)].strip()
    for stop in (word, [word, "zzzz-never"]):
        reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, stop=stop)
        assert reply.choices[0].message.content == expected
        assert reply.choices[0].finish_reason == "stop"
        assert reply.usage.completion_tokens == direct(ft, messages, 16, stop=[word]).new_tokens < 16
    chunks = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, stop=word,
                                            stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected


def test_sampling_settings(client, server):
    kwargs = dict(model=MODEL, messages=chat("Pick a word."), max_tokens=8, temperature=1.3,
                  top_p=0.95, seed=7)
    a = client.chat.completions.create(**kwargs).choices[0].message.content
    b = client.chat.completions.create(**kwargs).choices[0].message.content
    assert a == b  # the seed makes sampling reproducible
    greedy = client.chat.completions.create(model=MODEL, messages=chat("Pick a word."), max_tokens=8,
                                            temperature=0).choices[0].message.content
    others = {client.chat.completions.create(**{**kwargs, "seed": seed}).choices[0].message.content
              for seed in range(1, 6)}
    assert len(others | {greedy}) > 1  # temperature reaches generation


# -- refusals --------------------------------------------------------------------------------------
def test_wrong_or_missing_key_is_401(server):
    for key in ("wrong", ""):
        bad = openai.OpenAI(base_url=server["url"], api_key=key or "x", max_retries=0,
                            default_headers={} if key else {"Authorization": ""})
        with pytest.raises(openai.AuthenticationError) as info:
            bad.chat.completions.create(model=MODEL, messages=chat("hi"), max_tokens=2)
        assert info.value.status_code == 401
    for key in (None, "wrong"):
        status, body = raw(server, "POST", "/v1/chat/completions",
                           {"model": MODEL, "messages": chat("hi")}, key=key)
        assert status == 401
        assert_openai_error(body, "invalid_api_key")
    status, body = raw(server, "GET", "/v1/models", key=None)  # every route, not only generation
    assert status == 401
    status, body = raw(server, "GET", "/v1/models", key=None, headers={"Authorization": f"Basic {KEY}"})
    assert status == 401


@pytest.mark.parametrize("path, body, param", [
    ("/v1/chat/completions", '{"model": "tiny", "messages": [', None),               # broken JSON
    ("/v1/chat/completions", "", None),                                             # no body
    ("/v1/chat/completions", {"model": MODEL}, "messages"),                         # missing field
    ("/v1/chat/completions", {"messages": chat("hi")}, "model"),
    ("/v1/completions", {"model": MODEL}, "prompt"),
    ("/v1/chat/completions", {"model": MODEL, "messages": []}, "messages"),
    ("/v1/chat/completions", {"model": MODEL, "messages": "hi"}, "messages"),       # wrong types
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "robot", "content": "x"}]},
     "messages.0.role"),
    ("/v1/chat/completions", {"model": MODEL, "messages": chat("hi"), "max_tokens": "5"}, "max_tokens"),
    ("/v1/chat/completions", {"model": MODEL, "messages": chat("hi"), "max_tokens": 0}, "max_tokens"),
    ("/v1/chat/completions", {"model": MODEL, "messages": chat("hi"), "temperature": 3}, "temperature"),
    ("/v1/completions", {"model": MODEL, "prompt": 5}, "prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ("/v1/chat/completions", {"model": MODEL, "messages": chat("hi"), "n": 2}, "n"),
    ("/v1/chat/completions", {"model": MODEL, "messages": chat("hi"), "max_tokens": 65}, "max_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 10**9}, "max_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "   "}, None),                   # blank prompt
])
def test_bad_requests_are_400_with_an_openai_error_body(server, path, body, param):
    status, answer = raw(server, "POST", path, body)
    assert status == 400, answer
    assert_openai_error(answer)
    assert answer["error"]["type"] == "invalid_request_error"
    assert answer["error"]["param"] == param


def test_oversized_max_tokens_and_unknown_model_through_the_client(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=chat("hi"), max_tokens=1000)
    assert "64" in info.value.message  # the limit is named
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=chat("hi"))
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4o", prompt="hi")


def test_oversized_body_is_413(server):
    big = {"model": MODEL, "messages": chat("x" * (MAX_BODY + 1))}
    for chunked in (False, True):  # with a Content-Length, and streamed without one
        status, body = raw(server, "POST", "/v1/chat/completions", big, chunked=chunked)
        assert status == 413
        assert_openai_error(body, "request_too_large")
    status, _ = raw(server, "GET", "/v1/models")  # and the server goes on
    assert status == 200


def test_a_full_queue_is_503_and_unknown_paths_404(server):
    engine = server["app"].state.engine
    limit, engine.max_queue = engine.max_queue, 0
    try:
        status, body = raw(server, "POST", "/v1/chat/completions", {"model": MODEL, "messages": chat("hi")})
    finally:
        engine.max_queue = limit
    assert status == 503
    assert_openai_error(body, "server_overloaded")
    status, body = raw(server, "GET", "/v1/nothing")
    assert status == 404
    assert_openai_error(body)


# -- concurrency -----------------------------------------------------------------------------------
PROMPTS = ["hi", "What is the capital of France?", "Tell me a story about a dragon and a knight.",
           "2+2?", "Name three colours.", "Why is the sky blue? Explain it in simple words, please."]


def test_32_concurrent_clients_get_the_sequential_answers(client, server, ft):
    engine = server["app"].state.engine
    sequential = {(p, n): client.chat.completions.create(model=MODEL, messages=chat(p), max_tokens=n)
                  for p in PROMPTS for n in (6, 12)}
    before = engine.stats.batches, engine.stats.jobs, engine.stats.largest_batch
    assert before[2] <= 2  # so far, mostly one request at a time

    def client_run(i: int) -> list[tuple]:
        own = openai.OpenAI(base_url=server["url"], api_key=KEY, max_retries=0, timeout=120)
        out = []
        for j in range(3):
            p, n = PROMPTS[(i + j) % len(PROMPTS)], (6, 12)[(i * 3 + j) % 2]
            if (i + j) % 8 == 0:  # some clients stream, through the same worker
                chunks = own.chat.completions.create(model=MODEL, messages=chat(p), max_tokens=n, stream=True)
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                out.append((p, n, text, None))
            else:
                reply = own.chat.completions.create(model=MODEL, messages=chat(p), max_tokens=n)
                out.append((p, n, reply.choices[0].message.content, reply.usage))
        return out

    with ThreadPoolExecutor(32) as pool:
        results = [r for rs in pool.map(client_run, range(32)) for r in rs]
    assert len(results) == 96
    for p, n, text, used in results:
        assert text == sequential[(p, n)].choices[0].message.content, (p, n)
        if used is not None:
            assert used == sequential[(p, n)].usage
    stats = engine.stats
    assert stats.jobs - before[1] == 96
    assert stats.largest_batch > 1 and stats.batches - before[0] < 96  # requests were batched
    assert stats.largest_batch <= 8
    assert engine.waiting == 0
    after = client.chat.completions.create(model=MODEL, messages=chat("hi"), max_tokens=6)
    assert after.choices[0].message.content == sequential[("hi", 6)].choices[0].message.content


def test_a_failing_prompt_in_a_batch_fails_only_its_request(server, ft):
    too_long = "word " * 400  # beyond the tiny model's 256-token context window
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(raw, server, "POST", "/v1/completions",
                               {"model": MODEL, "prompt": too_long if i == 2 else PROMPTS[i], "max_tokens": 4})
                   for i in range(6)]
        answers = [f.result() for f in futures]
    for i, (status, body) in enumerate(answers):
        if i == 2:
            assert status == 400 and body["error"]["code"] == "context_length_exceeded"
        else:
            assert status == 200
            assert body["choices"][0]["text"] == direct(ft, PROMPTS[i], 4, chat_template=False).text


def test_a_client_that_leaves_a_stream_does_not_stall_the_server(client, server):
    engine = server["app"].state.engine
    streams = engine.stats.streams
    conn = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=60)
    conn.request("POST", "/v1/chat/completions", json.dumps(
        {"model": MODEL, "messages": chat("Tell me everything."), "max_tokens": 64, "stream": True}),
        {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.read(6) == b"data: "  # the first event begins; hang up
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    reply = client.chat.completions.create(model=MODEL, messages=chat("hi"), max_tokens=4)
    assert reply.choices[0].message.content
    deadline = time.monotonic() + 10
    while engine.stats.streams == streams and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.stats.streams == streams + 1 and engine.waiting == 0


# -- generate_batch: rows with their own limits and stops (what batching relies on) -----------------
def test_rows_with_their_own_limits_and_stops_equal_one_by_one(ft):
    handler = DefaultInferenceHandler()
    args = (ft.model, ft.tokenizer, "cpu")
    prompts = PROMPTS[:4]
    limits = [3, 16, 9, 1]
    word = direct(ft, prompts[1], 16).text.split()[1]
    stops = [None, [word], None, ["x"]]
    batched = handler.generate_batch(prompts, *args, 16, max_new_tokens_each=limits, stop_each=stops)
    alone = [handler.generate_batch([p], *args, n, stop=s)[0] for p, n, s in zip(prompts, limits, stops)]
    assert batched == alone
    assert batched[1].finished_with_eos and batched[1].new_tokens < 16
    assert [g.new_tokens for i, g in enumerate(batched) if i != 1] == [3, 9, 1]
    # a prompt near the context window (256) does not cut a short prompt's answer in its batch
    long = "word " * 215
    rendered = ft.tokenizer.apply_chat_template(chat(long), add_generation_prompt=True, tokenize=False)
    assert 240 < len(ft.tokenizer(rendered, add_special_tokens=False)["input_ids"]) < 250
    pair = handler.generate_batch([long, "hi"], *args, 16, max_new_tokens_each=[16, 16])
    assert pair == [handler.generate_batch([p], *args, 16)[0] for p in (long, "hi")]
    assert pair[1].new_tokens == 16 and pair[0].new_tokens < 16


def test_engine_queue_is_bounded():
    gate, started = threading.Event(), threading.Event()

    class Slow:
        def generate_batch(self, prompts, *a, **k):
            started.set()
            gate.wait(10)
            return []

    engine = Engine(None, None, "cpu", max_queue=1, batch_window_s=0)
    engine.start()
    try:
        slow = Slow()
        engine.submit(Job("a", slow, 1, [], lambda *_: None))
        assert started.wait(10)  # the worker holds the first job
        engine.submit(Job("b", slow, 1, [], lambda *_: None))
        with pytest.raises(QueueFull):
            engine.submit(Job("c", slow, 1, [], lambda *_: None))
    finally:
        gate.set()
        engine.close()


# -- the command -----------------------------------------------------------------------------------
def test_finetune_serve_builds_the_server(tiny_llama, monkeypatch):
    from finetuning_suite.cli.main import main

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    monkeypatch.setenv("FINETUNE_API_KEY", "from-env")
    assert main(["serve", "--model_id", tiny_llama, "--device", "cpu", "--port", "0",
                 "--max_tokens_limit", "32"]) == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] == 0
    app = seen["app"]
    assert app.state.model_name == "llama"  # the model folder's name
    guards = [m for m in app.user_middleware if m.cls.__name__ == "Guards"]
    assert guards and guards[0].kwargs["api_key"] == "from-env"
    assert main(["serve", "--model_id", tiny_llama, "--device", "cpu", "--model-name", "mine",
                 "--api-key", "k"]) == 0
    assert seen["app"].state.model_name == "mine" and seen["port"] == 8000


def test_finetune_serve_without_fastapi_says_what_to_install(monkeypatch, capsys):
    from finetuning_suite.cli.main import main

    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi -> ImportError
    assert main(["serve"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'finetuning_suite[serve]'" in err


def test_bad_serve_options_are_one_line_errors(capsys):
    from finetuning_suite.cli.main import main

    assert main(["serve", "--port", "70000"]) == 2
    assert "--port 70000" in capsys.readouterr().err


# -- several adapters, one base, one server --------------------------------------------------------
FACTS = [{"prompt": f"What is the capital of land {i}?", "completion": f"City {i}"} for i in range(8)]
STYLE = [{"prompt": f"Say hello {i}", "completion": "Ahoy " * (i % 3 + 1)} for i in range(8)]
PIRATE = "Talk like a pirate."
ASKED = ["What is the capital of land 3?", "Say hello 5", "Tell me a story.", "2+2?"]


def _trained_run(tiny_llama, root, name, rows, seed, **settings) -> str:
    """A run trained for two steps on `rows`, its LoRA B matrices then given random values (a few
    steps barely move a tiny model: this makes each run's greedy answers visibly its own), saved."""
    import torch

    data = root / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = FineTuner(tiny_llama, device="cpu", dataset_name=str(data), self_replay=False, max_steps=2,
                    save_strategy="no", report_to=["none"], **settings)
    run.train(root / name)
    torch.manual_seed(seed)
    with torch.no_grad():
        for weight, param in run.model.named_parameters():
            if "lora_B" in weight:
                param.normal_(0.0, 0.5)
    run.save(root / name)
    return str(root / name)


@pytest.fixture(scope="module")
def runs(tiny_llama, tmp_path_factory):
    """Two runs on the tiny Llama, different data and settings: 'facts' (max_length 12) and
    'style' (max_length 10, a system prompt)."""
    root = tmp_path_factory.mktemp("runs")
    return {"facts": _trained_run(tiny_llama, root, "facts", FACTS, 1, max_length=12),
            "style": _trained_run(tiny_llama, root, "style", STYLE, 2, max_length=10, system_prompt=PIRATE)}


@pytest.fixture(scope="module")
def own(runs, tiny_llama):
    """Each model as it answers on its own: FineTuner(run) and FineTuner(base)."""
    return {"facts": FineTuner(runs["facts"], device="cpu"), "style": FineTuner(runs["style"], device="cpu"),
            "llama": FineTuner(tiny_llama, device="cpu", max_length=8)}


@pytest.fixture(scope="module")
def shared(runs):
    from finetuning_suite.adapter_set import AdapterSet

    return AdapterSet({"facts": runs["facts"], "style": runs["style"]}, device="cpu")


@pytest.fixture(scope="module")
def multi(shared):
    app = create_app(shared, api_key=KEY)
    with serving(app) as port:
        yield {"app": app, "port": port,
               "client": openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY,
                                       max_retries=0, timeout=120)}


def test_models_lists_every_adapter_and_the_base(multi):
    client = multi["client"]
    assert [m.id for m in client.models.list().data] == ["facts", "style", "llama"]  # base: its folder's name
    assert [client.models.retrieve(n).id for n in ("facts", "style", "llama")] == ["facts", "style", "llama"]
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="other", messages=chat("hi"))
    assert info.value.code == "model_not_found"
    assert "'facts', 'style', 'llama'" in info.value.message


def test_each_model_answers_as_its_own_finetuner(multi, own):
    client = multi["client"]
    for name in ("facts", "style"):
        assert own[name].model.peft_config  # a run folder's adapter, not the base alone
    answers = {}
    for name, ft in own.items():
        for prompt in ASKED:
            reply = client.chat.completions.create(model=name, messages=chat(prompt),
                                                   **({"max_tokens": 8} if name == "llama" else {}))
            assert reply.model == name
            assert reply.choices[0].message.content == ft.generate(prompt), (name, prompt)
            answers[name, prompt] = reply
    # the runs' own settings: max_length (the default max_tokens) and the style run's system prompt
    assert max(answers["facts", p].usage.completion_tokens for p in ASKED) == 12
    assert max(answers["style", p].usage.completion_tokens for p in ASKED) <= 10
    tok = own["style"].tokenizer
    with_system = tok.apply_chat_template([{"role": "system", "content": PIRATE}, *chat(ASKED[0])],
                                          tokenize=False, add_generation_prompt=True)
    assert answers["style", ASKED[0]].usage.prompt_tokens == len(tok(with_system, add_special_tokens=False)["input_ids"])
    for prompt in ASKED:  # the three models differ, so a mixed-up answer would show
        assert len({answers[n, prompt].choices[0].message.content for n in own}) == 3, prompt
    # a raw completion and a stream go to the adapter asked for too
    reply = client.completions.create(model="style", prompt="Once upon a time", max_tokens=6)
    assert reply.choices[0].text == direct(own["style"], "Once upon a time", 6, chat_template=False).text
    chunks = client.chat.completions.create(model="facts", messages=chat(ASKED[0]), stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == own["facts"].generate(ASKED[0])


def test_interleaved_concurrent_requests_for_every_model_come_back_right(multi, own):
    engine = multi["app"].state.engine
    expected = {(n, p): ft.generate(p, 6) for n, ft in own.items() for p in ASKED}
    before = engine.stats.batches, engine.stats.jobs

    def ask(i: int):
        name, prompt = list(own)[i % 3], ASKED[(i // 3) % len(ASKED)]
        own_client = openai.OpenAI(base_url=f"http://127.0.0.1:{multi['port']}/v1", api_key=KEY,
                                   max_retries=0, timeout=120)
        if i % 7 == 0:
            chunks = own_client.chat.completions.create(model=name, messages=chat(prompt), max_tokens=6,
                                                        stream=True)
            return name, prompt, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        reply = own_client.chat.completions.create(model=name, messages=chat(prompt), max_tokens=6)
        return name, prompt, reply.choices[0].message.content

    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(ask, range(36)))
    assert [text for *_, text in results] == [expected[n, p] for n, p, _ in results]
    assert engine.stats.jobs - before[1] == 36
    assert engine.stats.largest_batch > 1 and engine.stats.batches - before[0] < 36  # still batched


def _parameter_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _file_tensor_bytes(path) -> int:
    """The bytes of the tensors stored in a safetensors file (read with safetensors itself)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys())


def test_a_second_adapter_adds_its_own_size_not_another_base(shared, own, runs, tiny_llama):
    one = _parameter_bytes(own["facts"].model)  # base + the facts adapter
    two = _parameter_bytes(shared.model)        # base + both adapters
    style = _file_tensor_bytes(f"{runs['style']}/adapter_model.safetensors")
    base = _file_tensor_bytes(f"{tiny_llama}/model.safetensors")
    assert two - one == style  # exactly the style adapter's weights
    assert style < base / 10 and two < 2 * base
    assert all(v.model is shared.model for v in shared)


def test_refusals_name_the_run_and_the_fix(runs, shared, tiny_llama, tiny_gpt2, tmp_path):
    import shutil

    import yaml

    from finetuning_suite import ConfigError
    from finetuning_suite.adapter_set import AdapterSet

    def refused(models, *needles, **options):
        with pytest.raises(ConfigError) as info:
            AdapterSet(models, device="cpu", **options)
        message = str(info.value)
        for needle in needles:
            assert needle in message, message
        return message

    other = tmp_path / "other-base"  # an adapter run whose base is another model
    shutil.copytree(runs["style"], other)
    record = json.loads((other / "finetuner_config.json").read_text())
    record["model"]["source"] = tiny_gpt2
    (other / "finetuner_config.json").write_text(json.dumps(record))
    refused({"facts": runs["facts"], "other": str(other)}, str(other), tiny_gpt2, tiny_llama,
            "every adapter must be trained on it", "separately")
    full = tmp_path / "full"  # a fully fine-tuned run
    FineTuner(tiny_llama, device="cpu", method="full").save(full)
    refused({"facts": runs["facts"], "whole": str(full)}, str(full), "fully fine-tuned", "on its own")
    refused([("a", runs["facts"]), ("a", runs["style"])], "'a' is given twice", "its own name")
    refused({"facts": runs["facts"], "gpt2": tiny_gpt2}, tiny_gpt2, "not the base")
    refused({"facts": runs["facts"], "style": runs["style"]}, "base_name='facts'", base_name="facts")
    refused({"base": tiny_llama}, "no adapter run")
    refused({"facts": runs["facts"]}, "per model", adapter_path=runs["style"])
    with pytest.raises(ConfigError, match="model_name"):
        create_app(shared, model_name="x")  # a set's models are named by the set
    pytest.importorskip("bitsandbytes")
    quantized = tmp_path / "qlora"  # the same run, but its base loads in 4-bit
    shutil.copytree(runs["style"], quantized)
    saved = yaml.safe_load((quantized / "config.yaml").read_text())
    (quantized / "config.yaml").write_text(yaml.safe_dump({**saved, "quantize": True, "method": "qlora"}))
    refused({"facts": runs["facts"], "q": str(quantized)}, str(quantized), "4-bit", "unquantized",
            "same quantize")


def test_finetune_serve_with_several_model_ids(runs, tiny_llama, monkeypatch, capsys):
    from finetuning_suite.cli.main import main

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    assert main(["serve", "--model_id", runs["facts"], "--model-id", f"pirate={runs['style']}",
                 "--device", "cpu"]) == 0
    assert seen["app"].state.model_names == ["facts", "pirate", "llama"]  # folder's name, given, base's
    assert "Serving 'facts', 'pirate', 'llama' at http://127.0.0.1:8000/v1" in capsys.readouterr().out
    assert main(["serve", "--model_id", f"base={tiny_llama}", "--model_id", f"facts={runs['facts']}",
                 "--device", "cpu"]) == 0
    assert seen["app"].state.model_names == ["base", "facts"]  # the base named by giving it
    assert main(["serve", "--model_id", f"facts={runs['facts']}", "--device", "cpu"]) == 0
    assert seen["app"].state.model_names == ["facts"]  # one model: served alone, under its name
    assert main(["serve", "--model_id", runs["facts"], "--model_id", runs["style"], "--model_name", "x"]) == 2
    assert "name each as name=path" in capsys.readouterr().err
    assert main(["serve", "--model_id", f"a={runs['facts']}", "--model_id", f"a={runs['style']}"]) == 2
    assert "'a' is given twice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "Give it more than once to serve several runs' LoRA adapters" in " ".join(capsys.readouterr().out.split())


# -- the embedded model ----------------------------------------------------------------------------
@pytest.mark.slow
def test_embedded_model_answers_through_the_server(embedded):
    app = create_app(embedded, model_name="smollm2-135m-instruct", api_key="k")
    with serving(app) as port:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0,
                               timeout=300)
        reply = client.chat.completions.create(
            model="smollm2-135m-instruct", max_tokens=30,
            messages=[{"role": "user", "content": "What is the capital of France?"}])
        assert "Paris" in reply.choices[0].message.content
        assert reply.choices[0].finish_reason == "stop"
        streamed = client.chat.completions.create(
            model="smollm2-135m-instruct", max_tokens=30, stream=True,
            messages=[{"role": "user", "content": "What is the capital of France?"}])
        text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
        assert text == reply.choices[0].message.content
