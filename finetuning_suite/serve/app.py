"""`create_app`: the FastAPI app of `finetune serve`.

    GET  /v1/models             the models served: a FineTuner's, under `model_name`; or an
                                `AdapterSet`'s runs and their base, each under its name
    POST /v1/chat/completions   messages -> the tokenizer's chat template -> an answer
    POST /v1/completions        a raw prompt (no chat template) -> the text that follows it

Both POST routes take `max_tokens` (chat: also `max_completion_tokens`), `temperature` (0 or
absent: greedy), `top_p`, `stop` (a string or up to 4), `seed`, `stream` (server-sent events in
OpenAI's chunk format, ending with `data: [DONE]`; `stream_options.include_usage` adds a usage
chunk) and answer with `usage` and `finish_reason` ("stop": EOS or a stop string, "length": the
token limit). Generation runs on the engine's single worker (`engine.py`).

Errors are OpenAI-shaped (`api_errors.py`): bad JSON, missing or mistyped fields, values out of
range and `max_tokens` above `max_tokens_limit` are 400 (FastAPI's 422 is turned into 400), a
wrong or missing key 401, an unknown model 404, a body above `max_body_bytes` 413, a full queue
503 with Retry-After.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ConfigError, FineTuningError
from ..infer.generation import Generation
from . import schemas as s
from .api_errors import APIError, error_body, validation_message
from .engine import Engine, EngineClosed, Handlers, Job, QueueFull, Sampling
from .limits import DEFAULTS
from .guards import Guards

logger = logging.getLogger(__name__)

API_KEY_ENV = "FINETUNE_API_KEY"
MAX_STOP_SEQUENCES = 4  # as OpenAI


def create_app(models, *, model_name: str | None = None, api_key: str | None = None,
               max_tokens_limit: int = DEFAULTS.max_tokens_limit,
               max_batch_size: int = DEFAULTS.max_batch_size,
               max_body_bytes: int = DEFAULTS.max_body_bytes, max_queue: int = DEFAULTS.max_queue,
               batch_window_s: float = DEFAULTS.batch_window_s) -> FastAPI:
    """The server's app over `models`: a `FineTuner` (its model, tokenizer and generation
    settings), served as `model_name`; or an `AdapterSet` (several runs' adapters on one base),
    each of its models served under its own name with its own settings, the request's `model`
    choosing which.

    api_key: every request must send `Authorization: Bearer <api_key>`; None reads the
        FINETUNE_API_KEY environment variable (unset or empty: no key needed).
    max_tokens_limit: the most new tokens a request may ask for (larger `max_tokens`: 400).
    max_batch_size: the most non-streaming requests answered by one batched generate call.
    max_body_bytes: the largest request body accepted (larger: 413).
    max_queue: requests waiting for the model beyond this are refused (503).
    batch_window_s: how long the engine waits for more requests to fill a batch.

    The engine worker starts with the app (its lifespan) and stops with it.
    """
    from ..adapter_set import AdapterSet

    is_set = isinstance(models, AdapterSet)
    _check_arguments([v.name for v in models] if is_set else [model_name], max_tokens_limit,
                     max_batch_size, max_body_bytes, max_queue, batch_window_s)
    if is_set and model_name is not None:
        raise ConfigError(f"create_app: model_name={model_name!r} names a FineTuner's one model; an "
                          "AdapterSet's models are named by the set (AdapterSet({'facts': "
                          "'runs/facts', ...}, base_name=...)).")
    if api_key is None:
        api_key = os.environ.get(API_KEY_ENV) or None
    engine = Engine(models.model, getattr(models, "tokenizer", None), models.device,
                    max_batch_size=max_batch_size, max_queue=max_queue, batch_window_s=batch_window_s)
    # an AdapterSet member generates with its own run's settings, on the shared model
    served = {v.name: _Served(Handlers(v.inference_handler), min(v.max_length, max_tokens_limit), v)
              for v in models} if is_set else \
        {model_name: _Served(Handlers(models.inference_handler), min(models.max_length, max_tokens_limit), None)}
    created = s.now()

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(engine.close)

    app = FastAPI(title="finetuning_suite", summary="OpenAI-compatible API over a fine-tuned model",
                  lifespan=lifespan)
    app.state.engine = engine
    app.state.model_names = list(served)
    app.state.model_name = app.state.model_names[0]  # the one served (the first, with several)
    app.add_middleware(Guards, api_key=api_key, max_body_bytes=max_body_bytes)
    _install_error_handlers(app)

    # -- routes ----------------------------------------------------------------------------------
    @app.get("/v1/models", response_model=s.ModelList)
    async def list_models():
        return s.ModelList(data=[s.ModelCard(id=name, created=created) for name in served])

    @app.get("/v1/models/{model_id:path}", response_model=s.ModelCard)
    async def get_model(model_id: str):
        _check_model(model_id, served)
        return s.ModelCard(id=model_id, created=created)

    @app.post("/v1/chat/completions", response_model=s.ChatCompletion)
    async def chat_completions(body: s.ChatCompletionRequest):
        model = _check_model(body.model, served)
        model_name = body.model
        _refuse(body.n not in (None, 1), "n", "Only n=1 is supported.")
        _refuse(bool(body.logprobs), "logprobs", "logprobs are not supported.")
        _refuse(bool(body.tools) or bool(body.functions), "tools", "Tools and functions are not supported.")
        if body.max_tokens is not None and body.max_completion_tokens is not None \
                and body.max_tokens != body.max_completion_tokens:
            raise APIError(400, "Give max_tokens or max_completion_tokens, not both.", param="max_tokens")
        given = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        max_tokens = _max_tokens(given, model.default_chat_tokens, max_tokens_limit,
                                 "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens")
        stop = _stops(body)
        handler = _handler(model.handlers, body, chat=True)
        prompt = [m.as_dict() for m in body.messages]
        rid, now = s.new_id("chatcmpl"), s.now()
        if body.stream:
            job = await _start_stream(engine, prompt, handler, max_tokens, stop, model.view)
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _sse(_chat_events(job, rid, now, model_name, include_usage))
        (g,) = await _generate(engine, [prompt], handler, max_tokens, stop, model.view)
        return s.ChatCompletion(
            id=rid, created=now, model=model_name,
            choices=[s.ChatChoice(index=0, message=s.AssistantMessage(content=g.text),
                                  finish_reason=_reason(g))],
            usage=s.usage(g.prompt_tokens, g.new_tokens))

    @app.post("/v1/completions", response_model=s.Completion)
    async def completions(body: s.CompletionRequest):
        model = _check_model(body.model, served)
        model_name = body.model
        _refuse(body.n not in (None, 1), "n", "Only n=1 is supported.")
        _refuse(body.best_of not in (None, 1), "best_of", "Only best_of=1 is supported.")
        _refuse(bool(body.echo), "echo", "echo is not supported.")
        _refuse(body.logprobs is not None, "logprobs", "logprobs are not supported.")
        _refuse(body.suffix is not None, "suffix", "suffix is not supported.")
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if not prompts:
            raise APIError(400, "prompt: give a string or a list of strings.", param="prompt")
        if len(prompts) > max_batch_size:
            raise APIError(400, f"prompt: at most {max_batch_size} prompts per request.", param="prompt")
        max_tokens = _max_tokens(body.max_tokens, 16, max_tokens_limit, "max_tokens")  # OpenAI's default
        stop = _stops(body)
        handler = _handler(model.handlers, body, chat=False)
        rid, now = s.new_id("cmpl"), s.now()
        if body.stream:
            if len(prompts) != 1:
                raise APIError(400, "stream: one prompt per streaming request.", param="prompt")
            job = await _start_stream(engine, prompts[0], handler, max_tokens, stop, model.view)
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _sse(_completion_events(job, rid, now, model_name, include_usage))
        out = await _generate(engine, prompts, handler, max_tokens, stop, model.view)
        return s.Completion(
            id=rid, created=now, model=model_name,
            choices=[s.CompletionChoice(index=i, text=g.text, finish_reason=_reason(g))
                     for i, g in enumerate(out)],
            usage=s.usage(sum(g.prompt_tokens for g in out), sum(g.new_tokens for g in out)))

    return app


# -- the models served ----------------------------------------------------------------------------
@dataclass
class _Served:
    """A model the server answers as: its generation settings (a handler per request sampling),
    its default max_tokens for chat, and the AdapterSet member its jobs run on (None: the one
    FineTuner's model)."""

    handlers: Handlers
    default_chat_tokens: int
    view: Any


# -- request checks -------------------------------------------------------------------------------
def _check_arguments(model_names, max_tokens_limit, max_batch_size, max_body_bytes, max_queue,
                     batch_window_s) -> None:
    problems = []
    positive = lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0  # noqa: E731
    for model_name in model_names:
        if not (isinstance(model_name, str) and model_name.strip()):
            problems.append(f"model_name={model_name!r}: must be a non-empty string")
    for name, value in [("max_tokens_limit", max_tokens_limit), ("max_batch_size", max_batch_size),
                        ("max_body_bytes", max_body_bytes), ("max_queue", max_queue)]:
        if not positive(value):
            problems.append(f"{name}={value!r}: must be a positive integer")
    if not (isinstance(batch_window_s, (int, float)) and 0 <= batch_window_s <= 10):
        problems.append(f"batch_window_s={batch_window_s!r}: must be seconds between 0 and 10")
    if problems:
        raise ConfigError("create_app: " + "; ".join(problems) + ".")


def _check_model(requested: str, served: dict[str, _Served]) -> _Served:
    if requested not in served:
        names = ", ".join(f"'{name}'" for name in served)
        raise APIError(404, f"The model '{requested}' does not exist; this server serves {names} "
                       "(GET /v1/models).", param="model", code="model_not_found")
    return served[requested]


def _refuse(condition: bool, param: str, message: str) -> None:
    if condition:
        raise APIError(400, message, param=param)


def _max_tokens(given: int | None, default: int, limit: int, param: str) -> int:
    if given is None:
        return min(default, limit)
    if given > limit:
        raise APIError(400, f"{param}={given} is above this server's limit of {limit} new tokens.",
                       param=param)
    return given


def _stops(body: s._Sampling) -> list[str]:
    stops = body.stop_list()
    if len(stops) > MAX_STOP_SEQUENCES:
        raise APIError(400, f"stop: at most {MAX_STOP_SEQUENCES} sequences.", param="stop")
    if any(not x for x in stops):
        raise APIError(400, "stop: sequences must be non-empty strings.", param="stop")
    return stops


def _handler(handlers: Handlers, body: s._Sampling, *, chat: bool):
    try:
        return handlers.get(Sampling(body.temperature, body.top_p, body.seed), chat=chat)
    except ConfigError as exc:
        raise APIError(400, str(exc)) from exc


def _reason(g: Generation) -> str:
    return "stop" if g.finished_with_eos else "length"


# -- running jobs ----------------------------------------------------------------------------------
def _submit(engine: Engine, *jobs: Job) -> None:
    try:
        engine.submit(*jobs)
    except QueueFull as exc:
        raise APIError(503, f"The server is busy ({exc}); retry shortly.", code="server_overloaded",
                       headers={"Retry-After": "1"}) from exc
    except EngineClosed as exc:
        raise APIError(503, str(exc), code="server_shutting_down") from exc


def _as_api_error(exc: BaseException) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, EngineClosed):
        return APIError(503, str(exc), code="server_shutting_down")
    if isinstance(exc, FineTuningError):
        code = "context_length_exceeded" if "context window" in str(exc) else None
        return APIError(400, str(exc), code=code)
    logger.error("Generation failed", exc_info=exc)
    return APIError(500, f"Generation failed: {type(exc).__name__}: {exc}")


async def _generate(engine: Engine, prompts: list, handler, max_tokens: int,
                    stop: list[str], view) -> list[Generation]:
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in prompts]

    def deliverer(future):
        def deliver(kind, value):
            loop.call_soon_threadsafe(_settle, future, kind, value)
        return deliver

    jobs = [Job(p, handler, max_tokens, stop, deliverer(f), view=view) for p, f in zip(prompts, futures)]
    _submit(engine, *jobs)
    try:
        return list(await asyncio.gather(*futures))
    except asyncio.CancelledError:
        for job in jobs:
            job.cancelled.set()
        raise
    except BaseException as exc:
        raise _as_api_error(exc) from exc


def _settle(future: asyncio.Future, kind: str, value) -> None:
    if future.done():
        return
    if kind == "error":
        future.set_exception(value)
    else:
        future.set_result(value)


class _StreamJob:
    """A streaming job and the asyncio queue its events arrive on."""

    def __init__(self, job: Job, events: asyncio.Queue):
        self.job, self.events = job, events


async def _start_stream(engine: Engine, prompt, handler, max_tokens: int, stop: list[str],
                        view) -> _StreamJob:
    """Queue a streaming job and wait until it starts (or fails: a bad prompt is a plain error
    response, not a broken stream)."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()

    def deliver(kind, value):
        loop.call_soon_threadsafe(events.put_nowait, (kind, value))

    job = Job(prompt, handler, max_tokens, stop, deliver, stream=True, view=view)
    _submit(engine, job)
    try:
        kind, value = await events.get()
    except asyncio.CancelledError:
        job.cancelled.set()
        raise
    if kind == "error":
        raise _as_api_error(value)
    return _StreamJob(job, events)


def _sse(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _data(payload) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def _events(stream: _StreamJob, first: dict | None, piece, last, usage_chunk) -> AsyncIterator[str]:
    """The SSE body: `first` (if any), a chunk per piece, the finish chunk, the usage chunk (if
    asked), `[DONE]`. A failure after the stream started is sent as an error event."""
    try:
        if first is not None:
            yield _data(first)
        while True:
            kind, value = await stream.events.get()
            if kind == "piece":
                yield _data(piece(value))
            elif kind == "done":
                yield _data(last(value))
                if usage_chunk is not None:
                    yield _data(usage_chunk(value))
                break
            elif kind == "error":
                yield _data(_as_api_error(value).body())
                break
        yield "data: [DONE]\n\n"
    finally:
        stream.job.cancelled.set()  # the client went away (or the stream ended): stop generating


def _chat_events(stream: _StreamJob, rid: str, created: int, model: str, include_usage: bool):
    def chunk(delta: dict, finish: str | None = None) -> dict:
        payload = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                   "system_fingerprint": None,
                   "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if include_usage:
            payload["usage"] = None
        return payload

    def usage(g: Generation) -> dict:
        payload = chunk({})
        payload["choices"] = []
        payload["usage"] = s.usage(g.prompt_tokens, g.new_tokens).model_dump()
        return payload

    return _events(stream, chunk({"role": "assistant", "content": ""}),
                   lambda text: chunk({"content": text}),
                   lambda g: chunk({}, _reason(g)),
                   usage if include_usage else None)


def _completion_events(stream: _StreamJob, rid: str, created: int, model: str, include_usage: bool):
    def chunk(text: str, finish: str | None = None) -> dict:
        payload = {"id": rid, "object": "text_completion", "created": created, "model": model,
                   "system_fingerprint": None,
                   "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}
        if include_usage:
            payload["usage"] = None
        return payload

    def usage(g: Generation) -> dict:
        payload = chunk("")
        payload["choices"] = []
        payload["usage"] = s.usage(g.prompt_tokens, g.new_tokens).model_dump()
        return payload

    return _events(stream, None, chunk, lambda g: chunk("", _reason(g)),
                   usage if include_usage else None)


# -- errors ----------------------------------------------------------------------------------------
def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        message, param = validation_message(list(exc.errors()))
        return JSONResponse(error_body(400, message, param=param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = (f"Unknown path {request.method} {request.url.path}; this server has GET "
                       "/v1/models, POST /v1/chat/completions and POST /v1/completions.")
        return JSONResponse(error_body(exc.status_code, message), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):
        logger.error("Unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(error_body(500, f"Internal error: {type(exc).__name__}."), status_code=500)
