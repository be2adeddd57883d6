"""What every run writes beside its adapter: the resolved configuration, library versions and
seed (`finetuner_config.json`), so a run can be reproduced and its adapter reloaded with the
right base model and preprocessing."""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import tempfile
import time
from pathlib import Path

_PACKAGES = ("finetuning_suite", "torch", "transformers", "peft", "datasets", "accelerate",
             "bitsandbytes", "safetensors")


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def write_json_atomic(path: str | os.PathLike, data: dict) -> None:
    """Write JSON to a temporary file in the same folder, then rename it into place, so a
    crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=False, default=_jsonable)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(value):
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value, key=str) if isinstance(value, (set, frozenset)) else list(value)
    return str(value)


def timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
