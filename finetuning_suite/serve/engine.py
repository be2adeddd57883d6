"""The engine: one worker thread that owns the model; every generation the server runs goes
through it, so the model is never used by two generations at once.

Requests become `Job`s in one queue (bounded: `submit` raises `QueueFull` past `max_queue`
waiting jobs). The worker takes the oldest job:

- a non-streaming job is batched with the other waiting non-streaming jobs that share its
  generation settings (the same `DefaultInferenceHandler`: greedy, or the same temperature, top_p
  and seed; chat or raw completion), oldest first, up to `max_batch_size`; when fewer are waiting
  it waits up to `batch_window_s` for more. The batch is one `generate_batch` call in which each
  row keeps its own `max_tokens` and `stop` (`max_new_tokens_each`, `stop_each`), so token counts
  and `finish_reason` are each request's own. A batch that fails on one bad prompt is rerun one
  job at a time, so the error reaches only the request that caused it.
- a streaming job runs alone, through `DefaultInferenceHandler.stream`, its pieces delivered as
  they come; the next job waits until it ends (or its client goes away).

With an `AdapterSet` (several runs' adapters on one base), a job carries the set's member it is
for (`view`); jobs of different members are never batched together, and each batch or stream
runs inside its member's `active()` (`set_adapter`, or the base with adapters disabled). Why not
one batch across adapters (peft's per-row `adapter_names=`): each run renders prompts with its
own chat format and system prompt and generates with its own settings, which one
`generate_batch` call cannot mix, while a batch of one run is exactly what that run's own
`FineTuner` computes. Measured (`bench/multi_adapter.py`, embedded model, 8 requests, 4 per
adapter, interleaved): per-adapter batches gave the same tokens/s as one mixed batch (1.01x, the
same text 8/8; a loaded 2-core CPU), one adapter's batch of 8 was 1.21x; a switch is 19 ms.
Under load each run's batch fills on its own; mixing would gain only while few requests of
several runs wait at once.

Results go back through each job's `deliver(kind, value)` callback, called on the worker thread
(the app turns it into an asyncio hand-over): "result" (a `Generation`), "started", "piece"
(text), "done" (a `Generation`) or "error" (an exception).

The generation settings of a request become a handler here (`Handlers`): the model's own
settings (top_k, repetition_penalty, system prompt, ...) with the request's sampling on top;
one handler per distinct setting, kept in a small cache, so batch compatibility is handler
identity.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import FineTuningError
from ..infer.generation import DefaultInferenceHandler, Prompt
from .limits import DEFAULTS

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """More jobs are waiting than the engine accepts."""


class EngineClosed(Exception):
    """The engine has stopped (the server is shutting down)."""


@dataclass(frozen=True)
class Sampling:
    """A request's sampling: temperature 0 or absent (or top_p 0) is greedy decoding."""

    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return not self.temperature or self.top_p == 0

    def key(self) -> tuple:
        if self.greedy:
            return (False,)
        return (True, float(self.temperature), 1.0 if self.top_p is None else float(self.top_p), self.seed)


class Handlers:
    """`DefaultInferenceHandler`s for (sampling, chat or raw completion), built from `base`'s
    settings with the request's sampling on top, and cached (a few dozen at most)."""

    def __init__(self, base, size: int = 32):
        self.base = base if isinstance(base, DefaultInferenceHandler) else None
        if base is not None and self.base is None:
            logger.warning("The FineTuner's inference handler %s is not a DefaultInferenceHandler; "
                           "the server generates with DefaultInferenceHandler's defaults.",
                           type(base).__name__)
        self.size = size
        self._cache: OrderedDict[tuple, DefaultInferenceHandler] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, sampling: Sampling, *, chat: bool) -> DefaultInferenceHandler:
        key = (sampling.key(), chat)
        with self._lock:
            handler = self._cache.get(key)
            if handler is not None:
                self._cache.move_to_end(key)
                return handler
        handler = DefaultInferenceHandler(**self._settings(sampling, chat))
        with self._lock:
            handler = self._cache.setdefault(key, handler)
            self._cache.move_to_end(key)
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return handler

    def _settings(self, sampling: Sampling, chat: bool) -> dict[str, Any]:
        b = self.base
        settings: dict[str, Any] = {}
        if b is not None:
            settings.update(b.generate_kwargs)
            settings.update(top_k=b.top_k, repetition_penalty=b.repetition_penalty,
                            system_prompt=b.system_prompt, use_chat_template=b.use_chat_template,
                            chat_format=b.chat_format)
        settings.pop("num_return_sequences", None)
        # one answer per prompt (OpenAI has no beam search); a raw completion is the text that
        # follows the prompt exactly: no chat template, whitespace kept
        settings.update(num_beams=1, do_sample=not sampling.greedy, seed=sampling.seed)
        if not chat:
            settings.update(use_chat_template=False, strip=False)
            if settings.get("chat_format") is not None:  # the run's template, prompts left plain
                settings["chat_format"] = dataclasses.replace(settings["chat_format"], wrap_text=False)
        if not sampling.greedy:
            settings.update(temperature=float(sampling.temperature),
                            top_p=1.0 if sampling.top_p is None else float(sampling.top_p))
        return settings


@dataclass(eq=False)
class Job:
    """One prompt to answer. `deliver(kind, value)` is called on the worker thread."""

    prompt: Prompt
    handler: DefaultInferenceHandler
    max_tokens: int
    stop: list[str]
    deliver: Callable[[str, Any], None]
    stream: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)
    view: Any = None  # the AdapterSet member it is for (a ModelView); None: the engine's model


@dataclass
class EngineStats:
    jobs: int = 0            # jobs run (batched or streamed)
    batches: int = 0         # generate_batch calls
    largest_batch: int = 0
    streams: int = 0
    new_tokens: int = 0


class Engine:
    def __init__(self, model, tokenizer, device: str, *, max_batch_size: int = DEFAULTS.max_batch_size,
                 max_queue: int = DEFAULTS.max_queue, batch_window_s: float = DEFAULTS.batch_window_s):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.max_batch_size, self.max_queue, self.batch_window_s = max_batch_size, max_queue, batch_window_s
        self.stats = EngineStats()
        self._pending: deque[Job] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._running: list[Job] = []

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        with self._cv:
            if self._thread is not None:
                return
            self._closed = False
            self._thread = threading.Thread(target=self._work, name="finetuning_suite-engine", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking jobs, fail the waiting ones, stop a running stream (a running batch
        finishes)."""
        with self._cv:
            self._closed = True
            waiting = list(self._pending)
            self._pending.clear()
            for job in self._running:
                job.cancelled.set()
            self._cv.notify_all()
        for job in waiting:
            job.deliver("error", EngineClosed("The server is shutting down."))
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def submit(self, *jobs: Job) -> None:
        """Queue the jobs (all or none)."""
        with self._cv:
            if self._closed or self._thread is None:
                raise EngineClosed("The server is not running.")
            if len(self._pending) + len(jobs) > self.max_queue:
                raise QueueFull(f"{len(self._pending)} requests are waiting (limit {self.max_queue}).")
            self._pending.extend(jobs)
            self._cv.notify_all()

    @property
    def waiting(self) -> int:
        return len(self._pending)

    # -- the worker ---------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            jobs = self._next()
            if jobs is None:
                return
            jobs = [j for j in jobs if not j.cancelled.is_set()]
            if not jobs:
                continue
            try:
                if jobs[0].stream:
                    self._run_stream(jobs[0])
                else:
                    self._run_batch(jobs)
            except BaseException as exc:  # never let the worker die with requests waiting
                logger.exception("Engine job failed")
                for job in jobs:
                    _deliver(job, "error", exc)
            finally:
                with self._cv:
                    self._running = []

    def _next(self) -> list[Job] | None:
        with self._cv:
            while not self._pending:
                if self._closed:
                    return None
                self._cv.wait()
            first = self._pending.popleft()
            if first.stream or self._closed:
                self._running = [first]
                return self._running
            deadline = time.monotonic() + self.batch_window_s
            while True:
                mates = [j for j in self._pending if not j.stream and j.handler is first.handler
                         and j.view is first.view]
                mates = mates[:self.max_batch_size - 1]
                left = deadline - time.monotonic()
                if len(mates) + 1 >= self.max_batch_size or left <= 0 or self._closed:
                    break
                self._cv.wait(left)
            for job in mates:
                self._pending.remove(job)
            self._running = [first, *mates]
            return self._running

    def _target(self, job: Job):
        """(model, tokenizer, the context in which the model is the job's) for `job`."""
        if job.view is None:
            return self.model, self.tokenizer, contextlib.nullcontext()
        return job.view.model, job.view.tokenizer, job.view.active()

    def _run_batch(self, jobs: list[Job]) -> None:
        handler = jobs[0].handler
        model, tokenizer, active = self._target(jobs[0])
        try:
            with active:
                out = handler.generate_batch(
                    [j.prompt for j in jobs], model, tokenizer, self.device,
                    max(j.max_tokens for j in jobs), max_new_tokens_each=[j.max_tokens for j in jobs],
                    stop_each=[j.stop for j in jobs])
        except FineTuningError as exc:
            if len(jobs) > 1:  # find whose prompt it was: rerun one at a time
                for job in jobs:
                    self._run_batch([job])
                return
            _deliver(jobs[0], "error", exc)
            return
        self.stats.jobs += len(jobs)
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(jobs))
        self.stats.new_tokens += sum(g.new_tokens for g in out)
        if len(jobs) > 1:
            logger.debug("Batch of %d requests, %d new tokens.", len(jobs), sum(g.new_tokens for g in out))
        for job, generation in zip(jobs, out):
            _deliver(job, "result", generation)

    def _run_stream(self, job: Job) -> None:
        finished: list = []
        model, tokenizer, active = self._target(job)
        with active:  # held until the stream ends: its tokens are generated in the block
            try:
                pieces = job.handler.stream(job.prompt, model, tokenizer, self.device,
                                            job.max_tokens, stop=job.stop, on_finish=finished.append)
            except FineTuningError as exc:
                _deliver(job, "error", exc)
                return
            _deliver(job, "started", None)
            try:
                for piece in pieces:
                    if job.cancelled.is_set():
                        break  # the client went away: closing the iterator stops generation
                    _deliver(job, "piece", piece)
            finally:
                pieces.close()
        self.stats.jobs += 1
        self.stats.streams += 1
        if finished:
            self.stats.new_tokens += finished[0].new_tokens
            _deliver(job, "done", finished[0])


def _deliver(job: Job, kind: str, value) -> None:
    try:
        job.deliver(kind, value)
    except Exception:  # a request that is gone must not stop the worker
        logger.debug("Could not deliver %s to a request", kind, exc_info=True)
