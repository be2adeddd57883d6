"""The output folder of a run: checked before training, never mixed with another run, and
written so that a crash leaves either the old state or the new one.

- `prepare_output_dir` runs before any training work: the folder must be writable (checked on
  the nearest existing parent, leaving nothing behind), and a folder that already holds a run is
  refused unless the user resumes it or asks to overwrite it (then its old contents are removed).
- `resolve_resume` turns `resume_from_checkpoint` (True, "true", "latest", a folder, False, None)
  into the checkpoint folder to resume from, or None.
- `commit_files` moves a finished save from a temporary sibling folder into place, the
  completeness marker (`finetuner_config.json`) last, and removes files of the previous save
  that the new one does not write.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..errors import ConfigError
from ..model.run_folder import CHECKPOINT, RUN_CONFIG_FILE, RUN_YAML_FILE, checkpoints
# Files whose presence means "a run was written here".
RUN_MARKERS = (RUN_CONFIG_FILE, RUN_YAML_FILE, "adapter_config.json", "adapter_model.safetensors",
               "model.safetensors", "config.json", "metrics.jsonl", "report.html")


def run_files(folder: Path) -> list[str]:
    """Names in `folder` that belong to a run (markers and checkpoints), sorted."""
    if not folder.is_dir():
        return []
    names = [name for name in RUN_MARKERS if (folder / name).exists()]
    names += [p.name for p in checkpoints(folder)]
    return sorted(names)


def check_writable(folder: Path) -> None:
    """Raise ConfigError unless `folder` (or, when it does not exist yet, its nearest existing
    parent) can be written. Nothing is left behind. A real write is tried (a temporary folder,
    removed at once): permission bits say nothing to root, and some folders (/proc, a read-only
    mount) refuse writes whatever they say."""
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"output_dir={str(folder)!r}: {str(probe)!r} is a file, not a folder; "
                          "pass a folder path.")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-check-", dir=probe))
    except OSError as exc:
        where = "is" if probe == folder else f"would be created in {str(probe)!r}, which is"
        raise ConfigError(f"output_dir={str(folder)!r} {where} not writable ({exc.strerror or exc}); "
                          "choose a folder you can write to, or fix its permissions.") from exc


def prepare_output_dir(output_dir, *, resume: bool, overwrite: bool, main_process: bool = True) -> Path:
    """Check `output_dir` before training starts (see the module docstring). With
    `overwrite=True` the folder's old contents are deleted (on the main process only)."""
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir={str(out)!r} is an existing file; pass a folder path.")
    check_writable(out)
    if resume:
        return out
    existing = run_files(out)
    if not existing:
        return out
    if not overwrite:
        shown = ", ".join(existing[:6]) + (", ..." if len(existing) > 6 else "")
        raise ConfigError(
            f"output_dir={str(out)!r} already holds a run ({shown}). Pass "
            "overwrite_output_dir=True to replace it (its contents are deleted first), "
            "resume_from_checkpoint=True to continue it, or another output_dir.")
    _refuse_dangerous(out)
    if main_process:
        for entry in out.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    return out


def _refuse_dangerous(out: Path) -> None:
    resolved = out.resolve()
    if resolved in (Path.home().resolve(), Path.cwd().resolve(), Path(resolved.anchor)) \
            or (resolved / ".git").exists():
        raise ConfigError(f"overwrite_output_dir=True would delete everything in {str(out)!r} "
                          "(the home, current or a repository folder); pass a dedicated output_dir.")


def resume_requested(value):
    """`resume_from_checkpoint` as None (start afresh), True (the latest checkpoint) or a path;
    booleans may come as text from YAML and flags ("true", "latest", "no")."""
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in ("", "false", "no")):
        return None
    if value is True or (isinstance(value, str) and value.strip().lower() in ("true", "yes", "latest")):
        return True
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    raise ConfigError(f"resume_from_checkpoint={value!r} must be True (the latest checkpoint in "
                      "output_dir) or the path of a checkpoint-N folder.")


def resolve_resume(output_dir, value) -> str | None:
    """The checkpoint folder to resume from: None when `value` asks for none; the latest
    `checkpoint-*` in `output_dir` (by step number) for True; else the folder given, checked."""
    resume = resume_requested(value)
    if resume is None:
        return None
    if resume is True:
        found = checkpoints(output_dir)
        if not found:
            raise ConfigError(
                f"resume_from_checkpoint=True: {str(output_dir)!r} holds no checkpoint-* folder to "
                "resume from. Checkpoints are written every save_steps steps; train without "
                "resume_from_checkpoint to start over.")
        return str(found[-1])
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        near = checkpoints(output_dir)
        hint = f" Checkpoints in {str(output_dir)!r}: {', '.join(p.name for p in near)}." if near else ""
        raise ConfigError(f"resume_from_checkpoint={str(value)!r} is not a checkpoint folder (no "
                          f"trainer_state.json); pass True for the latest one, or a checkpoint-N "
                          f"folder.{hint}")
    return str(path)


def commit_files(staging: Path, out: Path, previous: list[str] | None) -> list[str]:
    """Move every file of `staging` into `out` (the run marker last, after the previous marker
    was removed), delete `previous` files the new save did not write, remove `staging`.
    Returns the names written."""
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_CONFIG_FILE).unlink(missing_ok=True)  # incomplete until the new marker lands
    names = sorted(p.name for p in staging.iterdir())
    for name in names:
        if name == RUN_CONFIG_FILE:
            continue
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(staging / name, target)
    for name in previous or []:
        stale = out / name
        if name not in names and not CHECKPOINT.match(name) and stale.is_file():
            stale.unlink()
    if (staging / RUN_CONFIG_FILE).exists():
        os.replace(staging / RUN_CONFIG_FILE, out / RUN_CONFIG_FILE)
    shutil.rmtree(staging, ignore_errors=True)
    return names
