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
             "bitsandbytes", "safetensors", "trl")


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


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write text through a temporary file in the same folder, renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run_record(ft, resolved, training_args=None, metrics: dict | None = None) -> dict:
    """What `finetuner_config.json` holds: the model and how it was adapted, data format and
    counts, the resolved configuration, training arguments, seed, metrics and versions."""
    model = ft.model
    peft_config = getattr(model, "peft_config", {}).get("default")
    dataset = ft.dataset_name if isinstance(ft.dataset_name, (str, os.PathLike)) else (
        type(ft.dataset_name).__name__ if ft.dataset_name is not None else None)
    q = ft.quantization_config
    return {
        "created": timestamp(),
        "model": {
            "source": ft.source.source,
            "adapter_loaded_from": ft.source.adapter_path,
            "model_type": getattr(model.config, "model_type", None),
            "is_encoder_decoder": ft.is_encoder_decoder,
            "method": resolved.method.method,
            "dtype": str(ft.dtype),
            "device": ft.device,
            "quantization": q.to_dict() if q is not None else None,
        },
        "lora": peft_config.to_dict() if peft_config is not None else None,
        "data": {"dataset": str(dataset) if dataset is not None else None,
                 "preprocessor": type(ft.preprocessor).__name__, "stats": ft.data_stats,
                 "eval_fraction": ft.eval_fraction,
                 "evaluation_rows": ft.prepared.split.note if ft.prepared else None},
        "chat_format": {"template": ("fallback 'role: content'" if ft.chat_format.fallback else
                                     "the tokenizer's" if ft.chat_format.chat else None),
                        "wrap_text": ft.chat_format.wrap_text,
                        "system_prompt": ft.chat_format.system_prompt},
        "generation": {"max_length": ft.max_length,
                       "inference_handler": type(ft.inference_handler).__name__},
        "chosen_defaults": ft.chosen_defaults,
        "config": resolved.to_flat(),
        "training": training_args.to_dict() if training_args is not None else None,
        "seed": training_args.seed if training_args is not None else resolved.training.seed,
        "world_size": training_args.world_size if training_args is not None else None,
        # examples per optimizer step over all processes
        "global_batch_size": (training_args.per_device_train_batch_size
                              * training_args.gradient_accumulation_steps * training_args.world_size)
        if training_args is not None else None,
        "metrics": _trimmed(metrics),
        "estimate": getattr(ft, "estimate", None),  # made before training (train/estimate.py)
        "precision": _precision(ft.trainer_config),
        "versions": library_versions(),
    }


def _precision(trainer_config) -> dict | None:
    """The precision the run trained in and why (`train/precision.py`); None for a custom
    trainer config (its TrainingArguments' bf16/fp16 are in "training")."""
    chosen = getattr(trainer_config, "precision", None)
    return chosen.to_dict() if hasattr(chosen, "to_dict") else None


SAMPLES_KEPT = 10  # per evaluation in the run record; report.html shows them all


def _trimmed(metrics: dict | None) -> dict | None:
    """`metrics` with the before/after evaluations' samples cut to the first SAMPLES_KEPT."""
    if not metrics:
        return metrics
    out = dict(metrics)
    for key in ("before", "after"):
        ev = out.get(key)
        if isinstance(ev, dict):  # per-row numbers of a stage evaluation stay out of the record
            ev = {k: v for k, v in ev.items() if k not in ("logps", "totals")}
            if len(ev.get("samples") or []) > SAMPLES_KEPT:
                ev = {**ev, "samples": ev["samples"][:SAMPLES_KEPT], "samples_total": len(ev["samples"])}
            out[key] = ev
    return out


def resolved_config(config, *, training_args=None, output_dir=None, dataset_name=None,
                    lora_targets=None, peft_config=None):
    """The configuration with the run's automatic choices filled in, as `config.yaml` records
    it: training arguments as used, the LoRA targets as chosen ("all-linear" or names, not
    peft's expansion into module paths), no in-memory dataset (it cannot be written to YAML), and
    how the run was started left out (a rerun from config.yaml starts afresh)."""
    import copy
    import dataclasses

    cfg = copy.deepcopy(config)
    if not isinstance(dataset_name, (str, os.PathLike, type(None))):
        cfg.data.dataset_name = None
    if output_dir is not None:
        cfg.training.output_dir = str(output_dir)
    if training_args is not None:
        for f in dataclasses.fields(cfg.training):
            if hasattr(training_args, f.name) and f.name != "output_dir":
                setattr(cfg.training, f.name, _yaml_value(getattr(training_args, f.name)))
    cfg.training.resume_from_checkpoint = None
    cfg.training.overwrite_output_dir = False
    if cfg.training.reward_funcs:  # a Python function as the import path that finds it again
        cfg.training.reward_funcs = [f if isinstance(f, str) else
                                     f"{getattr(f, '__module__', '?')}:{getattr(f, '__qualname__', repr(f))}"
                                     for f in cfg.training.reward_funcs]
    if peft_config is not None and cfg.method.method != "full":
        if lora_targets is not None:
            cfg.method.lora_target_modules = [lora_targets] if isinstance(lora_targets, str) else list(lora_targets)
        cfg.method.lora_task_type = str(getattr(peft_config.task_type, "value", peft_config.task_type))
    return cfg


def _yaml_value(value):
    value = getattr(value, "value", value)  # enums (schedulers, strategies) as their names
    if isinstance(value, (list, tuple)):
        return [getattr(v, "value", v) for v in value]
    return value
