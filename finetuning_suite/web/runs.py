"""Reading a workspace: a folder of run folders, each written by `FineTuner.train` (and, when
the page started it, by `jobs`).

A run folder is a child of the workspace holding `config.yaml` (written when training starts),
`finetuner_config.json` (the run record, written last: a complete save) or `job.json` (a job the
page started). Everything shown about a run is read from these files and `metrics.jsonl`, so a
browser reload or a restarted `finetune web` loses nothing: the page is a view of the disk.
Only whether a job's process is still alive comes from outside (`jobs.JobRegistry.alive`).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..model.run_folder import RUN_CONFIG_FILE, RUN_YAML_FILE, checkpoints
from ..train.guards import STOP_FILE
from ..train.meter import METRICS_FILE, read_metrics

JOB_FILE = "job.json"  # the page's record of the processes it started for this run
JOB_CONFIG = "job.yaml"  # the configuration the page started the run with
LOG_FILE = "train.log"  # stdout and stderr of those processes
LOG_HEADER = "==== finetune web:"  # starts each attempt's part of the log
RESERVED = ("datasets", "exports")  # workspace folders that are not runs


@dataclass
class RunInfo:
    name: str
    path: Path
    status: str  # starting, running, stopping, finished, stopped, failed, interrupted, incomplete
    step: int | None = None
    max_steps: int | None = None
    loss: float | None = None
    eval_loss: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None
    elapsed_s: float | None = None  # seconds in the training loop (metrics.jsonl)
    job_s: float | None = None  # seconds the latest job has run (loading included)
    model: str | None = None
    method: str | None = None
    dataset: str | None = None
    created: float | None = None  # unix time the run (its latest job) started
    error: str | None = None  # the job's own error message, when it failed
    checkpoints: int = 0
    record: dict | None = None  # finetuner_config.json
    before: dict = field(default_factory=dict)  # numeric before/after evaluation metrics
    after: dict = field(default_factory=dict)
    retention: dict | None = None  # the retention probe's result (infer.retention.Retention)

    @property
    def alive(self) -> bool:
        return self.status in ("starting", "running", "stopping")

    @property
    def can_resume(self) -> bool:
        return not self.alive and self.checkpoints > 0 and self.status != "finished"

    @property
    def complete(self) -> bool:
        return self.record is not None


def is_run_folder(path: Path) -> bool:
    return path.is_dir() and path.name not in RESERVED and not path.name.startswith(".") and any(
        (path / name).is_file() for name in (RUN_CONFIG_FILE, RUN_YAML_FILE, JOB_FILE))


def run_folders(workspace) -> list[Path]:
    """The run folders of `workspace`, the most recently started first."""
    root = Path(workspace)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if is_run_folder(p)]
    return sorted(found, key=lambda p: (started_at(p) or 0.0, p.name), reverse=True)


def read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def job_record(path: Path) -> dict:
    return read_json(Path(path) / JOB_FILE) or {"attempts": []}


def started_at(path: Path) -> float | None:
    attempts = job_record(path).get("attempts") or []
    if attempts:
        return attempts[-1].get("started")
    for name in (RUN_CONFIG_FILE, RUN_YAML_FILE):
        if (path / name).exists():
            return (path / name).stat().st_mtime
    return None


def log_text(path: Path, attempt_only: bool = True, limit: int = 200_000) -> str:
    """The job log (its last `limit` characters); with `attempt_only`, from the latest
    attempt's header on."""
    file = Path(path) / LOG_FILE
    try:
        with open(file, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    if attempt_only and LOG_HEADER in text:
        text = text[text.rindex(LOG_HEADER):]
    return text


def last_error(text: str) -> str | None:
    """The error a job ended with, as a person should read it: the `finetune` command's own
    message (`error: ...` and its indented continuation lines: field, value, fix), else the
    last line of a Python traceback (never the traceback itself)."""
    lines = text.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("error: "):
            block = [lines[i][len("error: "):]]
            for line in lines[i + 1:]:
                if not line.startswith("  "):
                    break
                block.append(line)
            return "\n".join(block)
    if "Traceback (most recent call last):" in text:
        tail = text[text.rindex("Traceback (most recent call last):"):].splitlines()
        for line in reversed(tail):
            if line.strip() and not line.startswith((" ", "\t")):
                return line.strip()
    for line in reversed(lines):
        if line.startswith("Interrupted"):
            return line.strip()
    return None


def _numbers(ev) -> dict:
    if not isinstance(ev, dict):
        return {}
    return {k: v for k, v in ev.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def read_run(path, alive: bool = False, now: float | None = None) -> RunInfo:
    """What the files of run folder `path` say about it; `alive`: its job's process runs."""
    path = Path(path)
    now = time.time() if now is None else now
    record = read_json(path / RUN_CONFIG_FILE)
    job = job_record(path)
    attempt = (job.get("attempts") or [{}])[-1]
    info = RunInfo(name=path.name, path=path, status="incomplete", record=record,
                   created=started_at(path), checkpoints=len(checkpoints(path)))
    _read_settings(info, path, record)
    metrics = read_metrics(path / METRICS_FILE)
    start = next((r for r in reversed(metrics) if r.get("event") == "start"), None)
    attempt_started = attempt.get("started") or 0.0
    # a start event from an earlier attempt (a resume appends) does not mean this one trains
    training = start is not None and (start.get("time") or 0.0) >= attempt_started - 1
    _read_progress(info, metrics, start)
    if attempt.get("started") and (alive or attempt.get("ended")):
        info.job_s = (now if alive else attempt["ended"]) - attempt["started"]
    if record is not None:
        m = record.get("metrics") or {}
        info.before, info.after = _numbers(m.get("before")), _numbers(m.get("after"))
        info.retention = m.get("retention") if isinstance(m.get("retention"), dict) else None
        if info.eval_loss is None and isinstance(m.get("eval_loss"), (int, float)):
            info.eval_loss = m["eval_loss"]
    if alive:
        info.status = "stopping" if (path / STOP_FILE).exists() else ("running" if training else "starting")
        if training and info.step is not None and info.max_steps:
            base = start.get("step") or 0
            spent = now - (start.get("time") or now)
            if info.step > base and spent > 0:
                info.eta_s = max(0.0, (info.max_steps - info.step) * spent / (info.step - base))
        return info
    code = attempt.get("exit_code")
    text = log_text(path) if (path / LOG_FILE).exists() else ""
    if code not in (None, 0):
        info.status = "interrupted" if code in (130, -2) else "failed"
        info.error = last_error(text) or f"the training process ended with exit status {code}"
    elif record is not None:
        info.status = "stopped" if (record.get("metrics") or {}).get("stopped_at_step") else "finished"
    else:
        info.error = last_error(text)
        info.status = "failed" if info.error and not info.error.startswith("Interrupted") else (
            "interrupted" if info.checkpoints or info.error else "incomplete")
    return info


def _read_settings(info: RunInfo, path: Path, record: dict | None) -> None:
    flat = None
    if record is not None:
        flat = record.get("config")
        model = record.get("model") or {}
        info.model = model.get("source")
        info.method = model.get("method")
    if flat is None:
        flat = _yaml(path / RUN_YAML_FILE) or _yaml(path / JOB_CONFIG) or {}
    if isinstance(flat, dict):
        info.model = info.model or flat.get("model_id") or "embedded"
        info.method = info.method or flat.get("method")
        info.dataset = flat.get("dataset_name")


def _yaml(file: Path) -> dict | None:
    import yaml

    try:
        value = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return value if isinstance(value, dict) else None


def _read_progress(info: RunInfo, metrics: list[dict], start: dict | None) -> None:
    if start is not None:
        info.max_steps = start.get("max_steps")
    for rec in metrics:
        if isinstance(rec.get("step"), int):
            info.step = rec["step"]
        if rec.get("event") == "train":
            info.loss = rec.get("loss", info.loss)
            info.tokens_per_s = rec.get("tokens_per_s") or info.tokens_per_s
        elif rec.get("event") == "eval" and rec.get("eval_loss") is not None:
            info.eval_loss = rec["eval_loss"]
        elif rec.get("event") == "summary":
            info.tokens_per_s = rec.get("tokens_per_s_avg") or info.tokens_per_s
        if rec.get("elapsed_s") is not None:
            info.elapsed_s = rec["elapsed_s"]


def loss_series(path, label: str | None = None) -> dict[str, list[tuple[int, float]]]:
    """Train and eval loss per step of a run: {"train": [(step, loss), ...], "eval": [...]}
    (names prefixed by `label` when given; a series with no value is left out). A step logged
    twice (a resumed run appends) keeps its latest value."""
    points: dict[str, dict[int, float]] = {"train": {}, "eval": {}}
    for rec in read_metrics(Path(path) / METRICS_FILE):
        step = rec.get("step")
        if not isinstance(step, int):
            continue
        if rec.get("event") == "train" and rec.get("loss") is not None:
            points["train"][step] = rec["loss"]
        elif rec.get("event") == "eval" and rec.get("eval_loss") is not None:
            points["eval"][step] = rec["eval_loss"]
    prefix = f"{label} " if label else ""
    return {prefix + name: sorted(values.items()) for name, values in points.items() if values}


# What preference and reward stages log (TRL's keys), as curves beside the loss.
REWARD_KEYS = ("reward", "rewards/margins", "rewards/accuracies")


def reward_series(path) -> dict[str, list[tuple[int, float]]]:
    """Reward curves of a run, per step: GRPO's mean reward and each reward function's mean
    (`rewards/<name>/mean`), DPO/KTO/ORPO's margins and accuracies. Empty for SFT runs."""
    points: dict[str, dict[int, float]] = {}
    for rec in read_metrics(Path(path) / METRICS_FILE):
        step = rec.get("step")
        if not isinstance(step, int) or rec.get("event") != "train":
            continue
        for key, value in rec.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and (
                    key in REWARD_KEYS or (key.startswith("rewards/") and key.endswith("/mean"))):
                points.setdefault(key, {})[step] = value
    return {name: sorted(values.items()) for name, values in points.items()}


def samples(record: dict | None, which: str = "after") -> list[dict]:
    ev = ((record or {}).get("metrics") or {}).get(which)
    return list(ev.get("samples") or []) if isinstance(ev, dict) else []


def base_model(info: RunInfo) -> str | None:
    """The model a run started from (None: the embedded model), for a side-by-side chat."""
    source = info.model
    if not source or source == "embedded" or str(source).startswith("embedded:"):
        return None
    return source
