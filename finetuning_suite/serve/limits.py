"""The server's limits and their defaults, written once: `create_app`, the engine and
`finetune serve`'s flags all read them from here (no fastapi import, so `--help` stays light)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeLimits:
    max_tokens_limit: int = 1024     # the most new tokens one request may ask for (larger: 400)
    max_batch_size: int = 8          # the most requests answered by one batched generate call
    max_body_bytes: int = 1_000_000  # larger request bodies: 413
    max_queue: int = 64              # more waiting requests: 503 with Retry-After
    batch_window_s: float = 0.05     # how long a lone request waits for others to batch with


DEFAULTS = ServeLimits()
