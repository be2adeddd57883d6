"""Write a folder all at once: into a temporary sibling, then renamed into place.

A reader of `path` sees either the old folder or the complete new one, never a mix or a half
written export; an interrupted export leaves only a `<name>.tmp-*` sibling, removed on the next
try's failure path or by hand.
"""
from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path


def is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


@contextmanager
def staged_folder(path: Path):
    """Yield a fresh temporary folder beside `path`; when the block ends without an error, the
    folder replaces `path` (an existing folder is moved aside first and deleted afterwards, so
    the old and the new contents never mix). On an error the temporary folder is removed and
    `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = path.with_name(f"{path.name}.tmp-{tag}")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists() or path.is_symlink():
        old = path.with_name(f"{path.name}.old-{tag}")
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None:
            os.replace(old, path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
