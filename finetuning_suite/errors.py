"""One exception family for the package.

Every error a user can cause is a `FineTuningError`. Constructor validation collects all
problems first and raises one `ConfigError` listing them, so a user fixes everything in one go
(the torchtune habit) instead of meeting the problems one traceback at a time.
"""
from __future__ import annotations


class FineTuningError(Exception):
    """Base class of every error raised by finetuning_suite."""


class ConfigError(FineTuningError, ValueError):
    """An argument or configuration value is invalid."""


class ModelLoadError(FineTuningError, OSError):
    """A model, tokenizer or adapter could not be found or loaded."""


class DeviceError(FineTuningError, RuntimeError):
    """The requested device is not available."""


class DatasetError(FineTuningError, ValueError):
    """A dataset could not be found, read or understood."""


class Problems:
    """Collects validation problems and raises them together.

    >>> p = Problems("FineTuner")
    >>> p.add("lora_r", 0, "must be a positive integer, e.g. lora_r=16")
    >>> p.raise_if_any()
    Traceback (most recent call last):
    ...
    finetuning_suite.errors.ConfigError: FineTuner: 1 invalid argument:
      - lora_r=0: must be a positive integer, e.g. lora_r=16
    """

    def __init__(self, where: str, error_cls: type[FineTuningError] = ConfigError):
        self.where = where
        self.error_cls = error_cls
        self.items: list[str] = []

    def add(self, name: str, value, fix: str) -> None:
        self.items.append(f"{name}={value!r}: {fix}")

    def raise_if_any(self) -> None:
        if self.items:
            n = len(self.items)
            noun = "invalid argument" if n == 1 else "invalid arguments"
            lines = "\n".join(f"  - {item}" for item in self.items)
            raise self.error_cls(f"{self.where}: {n} {noun}:\n{lines}")


class TrainingError(FineTuningError, RuntimeError):
    """Training stopped: the loss became non-finite, or the device ran out of memory."""
