"""Every code block in README.md and docs/*.md runs, as a user would run it.

Why a small extractor of our own rather than pytest-examples or mktestdocs: the blocks need a
page-wide fixture (a scratch folder with the user's files, a tiny model in place of the embedded
one), Python and shell blocks sharing one working folder in page order, servers started in the
background and stopped with the page, and a visible skip marker; those tools run Python blocks
only (or each block alone) and offer none of that, while the rules below fit in this file.

The rules, which the docs follow:

- Each page runs in a fresh scratch folder holding what its blocks refer to: the repository's
  `recipes/`, `scripts/` and `bench/` (links) and the files of `tests/docs_fixtures/` (`facts.jsonl`: a
  dozen made-up facts, the "your own file" of the Quick start; `prefs.jsonl`: preference rows). Blocks run in page order and
  share state, as one terminal and one Python session would.
- ```python blocks run in one namespace per page.
- ```bash blocks run under `bash -e` in the scratch folder, with the virtual environment's
  `bin/` first on PATH (as after `source .venv/bin/activate`) and stdin empty. A line that is a
  `finetune serve ...` or `finetune web ...` command starts a server in the background; the page
  goes on once it prints its address, and it is stopped when the page ends.
- A ```yaml block whose first line is `# file: NAME` is written to NAME for later blocks.
- A block whose first line starts with `# not run by the docs test:` says why (GPU launch lines,
  the test command itself) and is skipped. Other languages (output, plain text) are not code.
- The model: `FINETUNING_SUITE_DEFAULT_MODEL` points `FineTuner()` (and every command without
  `--model_id`) at a tiny Llama built from a config (random weights, the embedded model's
  tokenizer), so blocks that train finish in seconds. Pages whose point is the real model carry
  `<!-- docs-test: embedded model -->` and run with it (marked slow).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "docs_fixtures"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP = "# not run by the docs test:"
EMBEDDED = "<!-- docs-test: embedded model -->"
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```\s*$", re.S | re.M)
SERVER = re.compile(r"^\s*finetune (serve|web)\b")
RUN_LANGS = {"python", "bash", "sh", "shell"}


def blocks(page: Path) -> list[tuple[str, str, int]]:
    """(language, code, line number) of every fenced block of `page`, in order."""
    text = page.read_text(encoding="utf-8")
    return [(m.group(1).lower(), m.group(2), text.count("\n", 0, m.start()) + 1)
            for m in FENCE.finditer(text)]


def test_every_page_has_runnable_blocks_and_skips_say_why():
    for page in PAGES:
        for lang, code, line in blocks(page):
            first = code.splitlines()[0] if code.strip() else ""
            if first.startswith("# not run"):
                assert first.startswith(SKIP) and len(first) > len(SKIP) + 5, \
                    f"{page.name}:{line}: a skipped block must say why after {SKIP!r}"
    assert sum(lang in RUN_LANGS for page in PAGES for lang, _, _ in blocks(page)) >= 15


class Page:
    """A page being run: its scratch folder, its Python namespace, its servers."""

    def __init__(self, folder: Path, env: dict):
        self.folder, self.env = folder, env
        self.namespace: dict = {"__name__": "__main__"}
        self.servers: list[subprocess.Popen] = []

    def python(self, code: str, where: str) -> None:
        previous = os.getcwd()
        os.chdir(self.folder)
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            exec(compile(code, where, "exec"), self.namespace)  # noqa: S102 - the docs' own code
        finally:
            os.chdir(previous)
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def bash(self, code: str, where: str) -> None:
        chunk: list[str] = []
        for line in code.splitlines() + [""]:
            if SERVER.match(line):
                self._run(chunk, where)
                chunk = []
                self._serve(line, where)
            else:
                chunk.append(line)
        self._run(chunk, where)

    def _run(self, lines: list[str], where: str) -> None:
        script = "\n".join(lines).strip()
        if not script:
            return
        proc = subprocess.run(["bash", "-e", "-c", script], cwd=self.folder, env=self.env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, (f"{where}: exit {proc.returncode}\n$ {script}\n"
                                      f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")

    def _serve(self, line: str, where: str) -> None:
        command = line.split("#", 1)[0].strip()
        proc = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=self.folder, env=self.env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.servers.append(proc)
        deadline, seen = time.time() + 300, []
        while time.time() < deadline:
            out = proc.stdout.readline()
            if not out and proc.poll() is not None:
                break
            seen.append(out)
            if "http://" in out and ("Serving" in out or "finetune web:" in out):
                _wait_for_port(out)
                return
        raise AssertionError(f"{where}: `{command}` did not start:\n{''.join(seen)[-3000:]}")

    def close(self) -> None:
        for proc in self.servers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def _wait_for_port(line: str) -> None:
    import socket

    match = re.search(r"http://\[?([\w.:]+?)\]?:(\d+)", line)
    host, port = match.group(1), int(match.group(2))
    host = "127.0.0.1" if host in ("0.0.0.0", "localhost") else host
    for _ in range(600):
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"nothing answers on {host}:{port}")


@pytest.fixture(scope="module")
def docs_env(tiny_llama):
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               FINETUNING_SUITE_DEFAULT_MODEL=tiny_llama, PATH=bin_dir + os.pathsep + os.environ["PATH"],
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return env


def _params():
    out = []
    for page in PAGES:
        slow = EMBEDDED in page.read_text(encoding="utf-8")
        out.append(pytest.param(page, id=str(page.relative_to(ROOT)),
                                marks=(pytest.mark.slow,) if slow else ()))
    return out


@pytest.mark.parametrize("page", _params())
def test_the_page_runs_as_shown(page, docs_env, tmp_path):
    env = dict(docs_env)
    if EMBEDDED in page.read_text(encoding="utf-8"):
        env.pop("FINETUNING_SUITE_DEFAULT_MODEL")
    for name in ("recipes", "scripts", "bench"):
        (tmp_path / name).symlink_to(ROOT / name)
    for file in FIXTURES.iterdir():
        shutil.copy(file, tmp_path / file.name)
    run = Page(tmp_path, env)
    try:
        for lang, code, line in blocks(page):
            where = f"{page.relative_to(ROOT)}:{line}"
            first = code.splitlines()[0] if code.strip() else ""
            if first.startswith(SKIP):
                continue
            if lang == "python":
                run.python(code, where)
            elif lang in ("bash", "sh", "shell"):
                run.bash(code, where)
            elif lang == "yaml" and first.startswith("# file:"):
                (tmp_path / first.split(":", 1)[1].strip()).write_text(code, encoding="utf-8")
    finally:
        run.close()
