"""Writing a run folder: the final save of `FineTuner.train` / `FineTuner.save`, staged so the
folder never holds a half-written run, and the weights gathered first when they are sharded.

`save_run` writes everything into `<output_dir>/.saving`, then `output_dir.commit_files` moves
it into place with `finetuner_config.json` last (its presence marks a complete save) and removes
files of the previous save that this one does not write (e.g. an old chat template).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import ConfigError
from ..model.run_folder import RUN_CONFIG_FILE, RUN_YAML_FILE
from .output_dir import commit_files
from .runinfo import write_json_atomic, write_text_atomic

STAGING = ".saving"


def output_folder(output_dir) -> Path:
    """`output_dir` as a folder path, refusing what cannot be one."""
    if not isinstance(output_dir, (str, Path)) and not hasattr(output_dir, "__fspath__"):
        raise ConfigError(f"output_dir={output_dir!r} must be a folder path (a string), e.g. "
                          "'runs/my_run'.")
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir={str(out)!r} is an existing file; pass a folder path.")
    return out


def previous_files(out: Path) -> list[str]:
    """The files the last complete save in `out` wrote (listed in its run record)."""
    try:
        return list(json.loads((out / RUN_CONFIG_FILE).read_text()).get("files") or [])
    except (OSError, ValueError, AttributeError):
        return []


def save_run(output_dir, *, model, tokenizer, config_yaml: str, record: dict,
             state_dict: dict | None = None) -> dict:
    """Save `model` (PEFT adapter or whole model), `tokenizer` (as it should reload: the caller
    hands a copy carrying the run's chat template), `config.yaml` and the run record `record`
    (its "files" filled in here). Returns the record written."""
    out = output_folder(output_dir)
    staging = out / STAGING
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        extra = {"state_dict": state_dict} if state_dict is not None else {}
        model.save_pretrained(staging, safe_serialization=True, **extra)
        tokenizer.save_pretrained(staging)
        write_text_atomic(staging / RUN_YAML_FILE, config_yaml)
        record = dict(record)
        record["files"] = sorted([p.name for p in staging.iterdir()] + [RUN_CONFIG_FILE])
        write_json_atomic(staging / RUN_CONFIG_FILE, record)
        commit_files(staging, out, previous_files(out))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return record


def gathered_state_dict(trainer) -> dict | None:
    """The full weights when FSDP or DeepSpeed shard them across processes (a collective call:
    every process must make it); None when the model is whole in every process."""
    if getattr(trainer, "is_fsdp_enabled", False):
        return trainer.accelerator.get_state_dict(trainer.model)
    if getattr(trainer, "is_deepspeed_enabled", False):
        return trainer.accelerator.get_state_dict(trainer.deepspeed)
    return None
