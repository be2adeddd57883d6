"""What a run folder (written by `FineTuner.train`) holds, and whether it is complete.

A complete run has `finetuner_config.json`, moved into place last by the save. A folder with
the run's `config.yaml` or `checkpoint-*` folders but without that marker is a run that was
interrupted: loading it says so and how to resume, instead of failing on a partial file.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import ModelLoadError

RUN_CONFIG_FILE = "finetuner_config.json"  # the completeness marker, written last
RUN_YAML_FILE = "config.yaml"  # the resolved FinetuneConfig of the run, flat YAML
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoints(folder: str | os.PathLike) -> list[Path]:
    """The `checkpoint-N` folders in `folder`, oldest (smallest N) first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if p.is_dir() and (m := CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def check_complete(folder: Path, given: str) -> None:
    """Raise ModelLoadError when `folder` is a run of ours that did not finish saving."""
    if (folder / RUN_CONFIG_FILE).is_file():
        return
    found = checkpoints(folder)
    started = (folder / RUN_YAML_FILE).is_file()
    if not (found or started):
        return  # not a run of ours: a plain model or adapter folder
    has_weights = (folder / "adapter_config.json").is_file() or (folder / "config.json").is_file()
    resume = (f"resume it with FineTuner(...).train({given!r}, resume_from_checkpoint=True) or "
              f"`finetune train --config {given}/{RUN_YAML_FILE} --resume_from_checkpoint true`")
    if found and not has_weights:
        raise ModelLoadError(
            f"model_id={given!r} holds training checkpoints ({', '.join(p.name for p in found[-3:])}) "
            f"but no final model: the run did not finish. To continue training, {resume}; to use "
            f"the latest checkpoint as it is, pass model_id={str(found[-1])!r}.")
    what = "its save did not complete" if has_weights else "it holds no model yet"
    fix = resume if found else "train again (the files present may be partial)"
    raise ModelLoadError(
        f"model_id={given!r} is an unfinished run: {what} ({RUN_CONFIG_FILE}, written last, is "
        f"missing). To fix it, {fix}.")
