"""`FineTuner`s kept in the page's process, for chat and export.

A model is loaded once per name (a run folder, a base model folder or .gguf, or None for the
embedded model) and kept while it is among the `capacity` most recently used. A run folder
loads as `FineTuner(model_id=run)` does everywhere else: its base model, its adapter and its
saved settings, its own tokenizer and chat template, so chat here renders prompts exactly as
training did. Each model has a lock: one generation or export at a time per model.
"""
from __future__ import annotations

import gc
import threading
from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class Loaded:
    finetuner: object
    lock: threading.Lock


class ModelCache:
    def __init__(self, capacity: int = 2, **options):
        """options: FineTuner keyword arguments for every model (e.g. device="cpu")."""
        self.capacity = capacity
        self.options = options
        self._items: OrderedDict[str | None, Loaded] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str | None, threading.Lock] = {}

    def get(self, model_id: str | None) -> Loaded:
        with self._lock:
            if model_id in self._items:
                self._items.move_to_end(model_id)
                return self._items[model_id]
            loading = self._loading.setdefault(model_id, threading.Lock())
        with loading:  # one load per name, others wait for it
            with self._lock:
                if model_id in self._items:
                    return self._items[model_id]
            from ..finetuner import FineTuner

            ft = FineTuner(model_id=model_id, **self.options)
            loaded = Loaded(ft, threading.Lock())
            with self._lock:
                self._items[model_id] = loaded
                while len(self._items) > self.capacity:
                    self._items.popitem(last=False)
                gc.collect()
            return loaded

    def forget(self, model_id: str | None) -> None:
        """Drop a model (its run folder was rewritten, e.g. by a resumed run)."""
        with self._lock:
            self._items.pop(model_id, None)
