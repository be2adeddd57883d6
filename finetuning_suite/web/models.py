"""Models kept in the page's process, for chat and export.

`get(model_id)`: a `FineTuner` per name (a run folder, a base model folder or .gguf, or None
for the embedded model), loaded as `FineTuner(model_id=...)` loads it everywhere else: its base
model, its adapter and its saved settings, its own tokenizer and chat template, so chat renders
prompts exactly as training did. Export uses it.

`chat_pair(a, b)`: the two sides of the Chat tab. When they can share one base (two runs on one
base, or a base and a run on it: `AdapterSet`'s rule), one loaded base with both adapters
answers for both (an `AdapterSet`), so comparing runs does not load the base twice; each side
still answers with its own run's settings. Otherwise each side is `get`'s FineTuner.

Every loaded entry has a lock: one generation or export at a time per loaded model (the two
sides of a shared base answer one after the other). Entries are kept while among the
`capacity` most recently used.
"""
from __future__ import annotations

import contextlib
import gc
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import FineTuningError

SIDES = ("side a", "side b")  # the names of the chat's two models in a shared AdapterSet


@dataclass
class Loaded:
    model: object  # a FineTuner, or for a shared chat pair an AdapterSet
    lock: threading.Lock


@dataclass
class ChatSide:
    """One side of the chat: what generates (a FineTuner, or an AdapterSet's ModelView: both
    have model, tokenizer, device, chat_format, inference_handler) and the lock of the loaded
    model it runs on."""

    model: object
    lock: threading.Lock

    def active(self):
        """The context in which the loaded model is this side's (its adapter, or the base)."""
        active = getattr(self.model, "active", None)
        return active() if active is not None else contextlib.nullcontext()


class ModelCache:
    def __init__(self, capacity: int = 2, **options):
        """options: FineTuner keyword arguments for every model (e.g. device="cpu")."""
        self.capacity = capacity
        self.options = options
        self._items: OrderedDict[object, Loaded] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[object, threading.Lock] = {}

    def get(self, model_id: str | None) -> Loaded:
        """The FineTuner of `model_id`."""
        from ..finetuner import FineTuner

        return self._load(model_id, lambda: FineTuner(model_id=model_id, **self.options))

    def chat_pair(self, a: str | None, b: str | None) -> tuple[ChatSide, ChatSide]:
        """The chat's two sides; one loaded base for both when they can share it."""
        if a == b:
            item = self.get(a)
            side = ChatSide(item.model, item.lock)
            return side, side
        from ..adapter_set import AdapterSet

        pairs = list(zip(SIDES, (a, b)))
        try:
            AdapterSet.check(pairs, **self.options)
        except FineTuningError:  # not one base (or a problem the side's own load will report)
            return tuple(ChatSide(item.model, item.lock) for item in (self.get(a), self.get(b)))
        item = self._load(("pair", a, b), lambda: AdapterSet(pairs, **self.options))
        return tuple(ChatSide(item.model[side], item.lock) for side in SIDES)

    def _load(self, key, build: Callable[[], object]) -> Loaded:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # one load per key, others wait for it
            with self._lock:
                if key in self._items:
                    return self._items[key]
            loaded = Loaded(build(), threading.Lock())
            with self._lock:
                self._items[key] = loaded
                while len(self._items) > self.capacity:
                    self._items.popitem(last=False)
                gc.collect()
            return loaded

    def loaded(self) -> list:
        """What is loaded now, oldest first: model_ids, and ("pair", a, b) for a shared chat pair."""
        with self._lock:
            return list(self._items)

    def forget(self, model_id: str | None) -> None:
        """Drop a model, and any shared chat pair holding it (its run folder was rewritten, e.g.
        by a resumed run)."""
        with self._lock:
            for key in [k for k in self._items
                        if k == model_id or (isinstance(k, tuple) and model_id in k[1:])]:
                self._items.pop(key, None)
