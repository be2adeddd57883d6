"""Screenshots of `finetune web` for the README, on the real embedded model (a few minutes on a
CPU): upload six made-up facts, train, watch, stop a second run, compare both, ask the base model
and the trained run the same question, export the adapter.

    python scripts/web_screenshots.py [docs/screenshots]

Needs the `test` extra (gradio, playwright) and the system's Chromium (`apt-get install
chromium`); nothing is downloaded. The page runs in this process over a temporary workspace.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from playwright.sync_api import sync_playwright  # noqa: E402

from finetuning_suite.config import FinetuneConfig  # noqa: E402
from finetuning_suite.data.sources import BUILTIN_DIR  # noqa: E402
from finetuning_suite.web.app import create_app, launch  # noqa: E402

QUESTION = "What is the capital of Zenthia?"


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="web_screenshots_"))
    rows = [json.loads(line) for line in (BUILTIN_DIR / "facts.train.jsonl").read_text().splitlines()]
    data = root / "my_facts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows[:18]), encoding="utf-8")
    config = FinetuneConfig.from_flat({"max_steps": 50, "logging_steps": 2, "eval_fraction": 0.2,
                                       "eval_before": True, "max_length": 48})
    app = create_app(config, root / "runs")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch(app, port=port, block=False, quiet=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(900_000)
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("#start")
        page.set_input_files("#upload input[type=file]", str(data))
        page.wait_for_selector("#preview pre mark.loss")
        fill(page, "run-name", "facts-lora")
        page.screenshot(path=str(out / "train.png"), full_page=True)
        page.click("#start")
        wait(page, "#watch-status", r"Status: running · step (1[0-9]|[2-9][0-9])")
        page.screenshot(path=str(out / "watch.png"), full_page=True)
        wait(page, "#watch-status", "Status: (finished|failed)")
        tab(page, "Train")
        fill(page, "knob-lora_r", "4")
        fill(page, "run-name", "facts-lora-r4")
        page.click("#start")
        wait(page, "#watch-status", r"Status: running · step (1[2-9]|[2-9][0-9])")
        page.click("#stop")
        wait(page, "#watch-status", "Status: (stopped|finished|failed)")
        tab(page, "Runs")
        choose(page, "compare-a", "facts-lora")
        choose(page, "compare-b", "facts-lora-r4")
        page.click("#compare")
        page.wait_for_selector("#compare-plot polyline")
        time.sleep(1)
        page.screenshot(path=str(out / "runs.png"), full_page=True)
        tab(page, "Chat")
        choose(page, "chat-model-b", "run: facts-lora")
        fill(page, "chat-input", QUESTION)
        page.click("#send")
        page.wait_for_function("document.querySelector('#chat-input textarea, #chat-input input').value === ''"
                               " && document.querySelectorAll('#chat-b .bot, #chat-b [data-testid=\"bot\"]').length > 0")
        time.sleep(20)  # both answers complete
        page.screenshot(path=str(out / "chat.png"), full_page=True)
        tab(page, "Export")
        choose(page, "export-run", "facts-lora")
        page.get_by_label("adapter only").check()
        page.click("#export-button")
        wait(page, "#export-result", "adapter_model.safetensors")
        page.screenshot(path=str(out / "export.png"), full_page=True)
        browser.close()
    app.close()
    print(f"screenshots in {out}; workspace {root}")


def fill(page, elem_id: str, text: str) -> None:
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.fill(text)
    box.press("Tab")


def tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def choose(page, elem_id: str, label: str) -> None:
    page.click(f"#{elem_id} input")
    options = page.get_by_role("option")
    for i in range(options.count()):
        if options.nth(i).inner_text().replace("✓", "").strip() == label:
            options.nth(i).click()
            return
    raise SystemExit(f"{label!r} is not offered in #{elem_id}")


def wait(page, selector: str, pattern: str) -> None:
    page.wait_for_function(
        "([sel, pat]) => { const e = document.querySelector(sel);"
        " return e && new RegExp(pat).test(e.innerText); }", arg=[selector, pattern])


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots"))
