"""Training jobs: the same training the CLI runs, in a process of its own.

    start:  <run>/job.yaml (the validated configuration) is written, then
            [python, -m, finetuning_suite, train, --config, <run>/job.yaml] runs with its
            stdout and stderr appended to <run>/train.log.
    stop:   <run>/STOP is created; training ends at its next step with a checkpoint and the
            normal final save (`train.guards.StopFileCallback`). A job still loading (no
            training step yet) is interrupted instead (SIGINT: nothing was trained to save).
    resume: [..., train, --config, <run>/config.yaml, --resume_from_checkpoint, true]: the run's
            own resolved configuration, from its latest checkpoint.

Each start is an attempt recorded in <run>/job.json (command, pid, start time, then exit status
and end time once this process sees it end). Processes run in their own session, so they
outlive a browser reload and the page itself: a new `JobRegistry` over the same workspace finds
them again by pid (checked against the process's command line, so a reused pid is not mistaken
for the job).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..config import FinetuneConfig
from ..errors import ConfigError
from ..model.run_folder import RUN_YAML_FILE
from ..train.guards import STOP_FILE
from ..train.meter import METRICS_FILE, read_metrics
from ..train.runinfo import write_json_atomic, write_text_atomic
from .runs import JOB_CONFIG, JOB_FILE, LOG_FILE, LOG_HEADER, job_record


def train_command(config_path: Path, resume: bool = False) -> list[str]:
    command = [sys.executable, "-m", "finetuning_suite", "train", "--config", str(config_path)]
    return command + (["--resume_from_checkpoint", "true"] if resume else [])


class JobRegistry:
    """The training processes this page started (and finds again) in a workspace."""

    def __init__(self, workspace):
        self.workspace = Path(workspace)
        self._procs: dict[Path, subprocess.Popen] = {}
        self._lock = threading.Lock()

    # -- starting ---------------------------------------------------------------------------
    def start(self, config: FinetuneConfig, run_dir) -> int:
        """Start training `config` (already validated) in the new folder `run_dir`; its
        output_dir is set to `run_dir`. Returns the pid."""
        run_dir = Path(run_dir).resolve()
        if run_dir.exists() and any(run_dir.iterdir()):
            raise ConfigError(f"run name {run_dir.name!r}: the folder {str(run_dir)!r} already "
                              "holds files; choose another run name.")
        config.training.output_dir = str(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            write_text_atomic(run_dir / JOB_CONFIG, config.to_yaml())
            return self._launch(run_dir, train_command(run_dir / JOB_CONFIG))
        except BaseException:
            for name in (JOB_CONFIG, JOB_FILE, LOG_FILE):
                (run_dir / name).unlink(missing_ok=True)
            if not any(run_dir.iterdir()):
                run_dir.rmdir()
            raise

    def resume(self, run_dir) -> int:
        """Continue `run_dir` from its latest checkpoint with its own resolved config.yaml."""
        run_dir = Path(run_dir).resolve()
        if self.alive(run_dir):
            raise ConfigError(f"run {run_dir.name!r} is still running; stop it first.")
        config_file = run_dir / RUN_YAML_FILE
        if not config_file.is_file():
            raise ConfigError(f"run {run_dir.name!r} has no {RUN_YAML_FILE} (training never "
                              "started), so there is nothing to resume; start a new run.")
        return self._launch(run_dir, train_command(config_file, resume=True))

    def _launch(self, run_dir: Path, command: list[str]) -> int:
        with self._lock:
            record = job_record(run_dir)
            started = time.time()
            with open(run_dir / LOG_FILE, "ab") as log:
                header = (f"{LOG_HEADER} {time.strftime('%Y-%m-%d %H:%M:%S')} "
                          f"{' '.join(command)} ====\n")
                log.write(header.encode("utf-8"))
                log.flush()
                env = dict(os.environ, PYTHONUNBUFFERED="1")
                # SIGINT back to its default in the job: a page started in the background
                # (`finetune web &`) has it ignored, the job would inherit that and Stop could
                # not cancel it while it loads
                proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                        preexec_fn=_default_sigint)
            self._procs[run_dir] = proc
            record.setdefault("attempts", []).append(
                {"command": command, "pid": proc.pid, "started": started, "ended": None,
                 "exit_code": None})
            write_json_atomic(run_dir / JOB_FILE, record)
            return proc.pid

    # -- watching ---------------------------------------------------------------------------
    def alive(self, run_dir) -> bool:
        run_dir = Path(run_dir).resolve()
        self.reap()
        with self._lock:
            proc = self._procs.get(run_dir)
            if proc is not None:
                return proc.poll() is None
        attempt = _last_attempt(run_dir)
        if not attempt or attempt.get("exit_code") is not None or attempt.get("ended"):
            return False
        return _process_matches(attempt.get("pid"), attempt.get("command") or [])

    def reap(self) -> None:
        """Record the exit status of every finished process this registry started."""
        with self._lock:
            for run_dir, proc in list(self._procs.items()):
                code = proc.poll()
                if code is None:
                    continue
                del self._procs[run_dir]
                record = job_record(run_dir)
                attempts = record.get("attempts") or []
                if attempts and attempts[-1].get("pid") == proc.pid:
                    attempts[-1].update(exit_code=code, ended=time.time())
                    write_json_atomic(run_dir / JOB_FILE, record)
                (run_dir / STOP_FILE).unlink(missing_ok=True)  # seen too late: not for the next run

    def running(self) -> list[Path]:
        self.reap()
        with self._lock:
            return [p for p, proc in self._procs.items() if proc.poll() is None]

    # -- stopping ---------------------------------------------------------------------------
    def stop(self, run_dir) -> str:
        """Ask the job of `run_dir` to stop; returns what was done, for the page."""
        run_dir = Path(run_dir).resolve()
        if not self.alive(run_dir):
            return f"Run {run_dir.name!r} is not running."
        if training_started(run_dir):
            (run_dir / STOP_FILE).touch()
            return (f"Stopping {run_dir.name!r}: it saves a checkpoint at its next step and "
                    "finishes normally; Resume continues it.")
        pid = (_last_attempt(run_dir) or {}).get("pid")
        if pid:
            try:
                os.kill(pid, signal.SIGINT)
            except ProcessLookupError:
                pass
        return f"Cancelled {run_dir.name!r} before its first training step (nothing to save)."

    def wait(self, run_dir, timeout: float) -> int | None:
        """Wait for this registry's process of `run_dir` to end; its exit status."""
        with self._lock:
            proc = self._procs.get(Path(run_dir).resolve())
        if proc is None:
            return None
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self.reap()
        return code


ESTIMATE_TIMEOUT_S = 900


def dry_run_text(config: FinetuneConfig, timeout: float = ESTIMATE_TIMEOUT_S) -> str:
    """The estimate `finetune train --dry_run` prints for `config` (already validated), made in
    a process of its own (it loads the model and times a step): the page's Estimate button."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="finetune-estimate-") as tmp:
        config_file = Path(tmp) / JOB_CONFIG
        write_text_atomic(config_file, config.to_yaml())
        command = [sys.executable, "-m", "finetuning_suite", "train", "--config", str(config_file), "--dry_run"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        except subprocess.TimeoutExpired:
            raise ConfigError(f"the estimate took more than {timeout:.0f} s; try `finetune train --config "
                              "... --dry_run` in a terminal.") from None
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        raise ConfigError(errors[-1].removeprefix("error:").strip() if errors else
                          f"the estimate failed (exit status {done.returncode}): {done.stderr[-500:]}")
    text = done.stdout
    return text[text.find("Estimate for this run"):] if "Estimate for this run" in text else text


def training_started(run_dir: Path) -> bool:
    """Whether the latest attempt has begun its training loop (metrics.jsonl has its start)."""
    started = (_last_attempt(run_dir) or {}).get("started") or 0.0
    return any(r.get("event") == "start" and (r.get("time") or 0.0) >= started - 1
               for r in read_metrics(Path(run_dir) / METRICS_FILE))


def _last_attempt(run_dir: Path) -> dict | None:
    attempts = job_record(run_dir).get("attempts") or []
    return attempts[-1] if attempts else None


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _process_matches(pid, command: list[str]) -> bool:
    """Whether `pid` is alive and runs `command` (a reused pid runs something else)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.exists():
        return True  # no /proc (macOS): trust the pid
    try:
        args = cmdline.read_bytes().decode("utf-8", errors="replace").split("\0")
    except OSError:
        return False
    status = Path(f"/proc/{pid}/stat")
    try:
        if status.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False  # a zombie: ended, not yet reaped by its parent
    except (OSError, IndexError):
        pass
    config = command[command.index("--config") + 1] if "--config" in command[:-1] else None
    return config is not None and config in args and "finetuning_suite" in args
