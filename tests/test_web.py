"""`finetune web` in a real headless browser: upload a dataset, see it as the model sees it, train
a tiny model, watch it, stop and resume a run, chat with the result, export it, compare runs,
and see bad input as a message (never a traceback).

Chromium is the system's (`apt-get install chromium`; `.ci/run` installs it when missing) and
Playwright (PyPI) drives it through `executable_path`: nothing is downloaded at run time, and
every request that would leave this machine is refused and recorded. The module is skipped
when chromium, playwright or gradio is missing.

The page runs in this process (a background server on a free port) over a workspace in a temp
folder, with the tiny Llama from `conftest.py` as its model, so each training takes seconds
(in a `python -m finetuning_suite train` process, as on the page). The tests run in file order
and share the page: each continues from what the previous one left.

Screenshots of each tab are written to a temp folder (or to `$FINETUNE_WEB_SCREENSHOTS`); the
README's are of the embedded model, made by `scripts/web_screenshots.py`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")
pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")

from finetuning_suite.config import FinetuneConfig, TrainingConfig  # noqa: E402

WAIT_MS = 150_000  # training under a loaded 2-core CI machine
ROWS = [{"prompt": f"What is {i} plus {i}?", "completion": str(2 * i)} for i in range(12)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def web(tiny_llama, tmp_path_factory):
    from finetuning_suite.web.app import create_app, launch

    root = tmp_path_factory.mktemp("web")
    workspace = root / "workspace"
    data = root / "sums.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    config = FinetuneConfig.from_flat({
        "model_id": tiny_llama, "device": "cpu", "max_steps": 4, "logging_steps": 1,
        "self_replay": False, "eval_fraction": 0.25, "eval_before": True, "max_length": 12,
        "report_to": ["none"]})
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    app = create_app(config, workspace, device="cpu", timer_s=0.5)
    port = _free_port()
    launch(app, port=port, block=False, quiet=True)
    shots = Path(os.environ.get("FINETUNE_WEB_SCREENSHOTS") or root / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    yield {"url": f"http://127.0.0.1:{port}/", "app": app, "workspace": workspace, "data": data,
           "shots": shots, "tiny": tiny_llama}
    app.close()
    for run in app.page.jobs.running():  # a failed test may leave a job behind
        (run / "STOP").touch()
        app.page.jobs.wait(run, 60)


@pytest.fixture(scope="module")
def page(web):
    blocked: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        context = browser.new_context(viewport={"width": 1280, "height": 900})

        def route(r):
            if r.request.url.startswith(("http://127.0.0.1", "data:", "blob:")):
                r.continue_()
            else:
                blocked.append(r.request.url)
                r.abort()

        context.route("**/*", route)
        pg = context.new_page()
        pg.set_default_timeout(30_000)
        pg.goto(web["url"])
        pg.wait_for_selector("#start")
        pg.blocked = blocked
        yield pg
        browser.close()


# -- helpers ---------------------------------------------------------------------------------
def fill(page, elem_id: str, text: str) -> None:
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.fill(text)
    box.press("Tab")  # blur: the page updates the resolved configuration


def choose(page, elem_id: str, label: str) -> None:
    page.click(f"#{elem_id} input")
    options = page.get_by_role("option")
    for i in range(options.count()):
        if options.nth(i).inner_text().replace("✓", "").strip() == label:
            options.nth(i).click()
            return
    raise AssertionError(f"{label!r} is not among {[o.inner_text() for o in options.all()]}")


def tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def wait_text(page, selector: str, pattern: str, timeout: int = 30_000) -> str:
    page.wait_for_function(
        "([sel, pat]) => { const e = document.querySelector(sel);"
        " return e && new RegExp(pat).test(e.innerText); }", arg=[selector, pattern], timeout=timeout)
    return page.inner_text(selector)


def no_traceback(page) -> None:
    body = page.inner_text("body")
    assert "Traceback" not in body and 'File "' not in body, body[-2000:]


def shot(web, page, name: str) -> None:
    page.screenshot(path=str(web["shots"] / f"{name}.png"), full_page=True)


def status(page) -> str:
    return page.inner_text("#watch-status")


# -- the flow --------------------------------------------------------------------------------
def test_upload_shows_rows_as_the_model_sees_them(web, page):
    # the knobs' help comes from the configuration itself
    lr_help = [f for f in TrainingConfig.__dataclass_fields__.values() if f.name == "learning_rate"][0]
    assert lr_help.metadata["help"] in page.inner_text("#knob-learning_rate")
    page.set_input_files("#upload input[type=file]", str(web["data"]))
    page.wait_for_selector("#preview mark.loss")
    preview = page.inner_text("#preview")
    # the split training makes: eval_fraction 0.25 of 12 rows, shuffled with the run's seed
    assert "9 training rows (+3 held out for evaluation)" in preview and "prompt_completion" in preview
    rows = page.locator("#preview pre").all_inner_texts()
    assert len(rows) == 3
    for row in rows:  # the chat template around the question; the answer and EOS carry loss
        n = int(re.search(r"<\|im_start\|>user\nWhat is (\d+) plus \1\?<\|im_end\|>\n"
                          r"<\|im_start\|>assistant\n", row).group(1))
        assert row.endswith(f"assistant\n{2 * n}<|im_end|>")
    trained = page.locator("#preview pre mark.loss").all_inner_texts()
    assert len(trained) == 3 and all(re.fullmatch(r"\d+<\|im_end\|>", t) for t in trained)
    kept = web["workspace"] / "datasets" / "sums.jsonl"
    assert kept.is_file()
    assert page.input_value("#knob-dataset_name input") == str(kept)
    shot(web, page, "train")


def test_advanced_yaml_is_the_resolved_config_and_edits_reach_the_knobs(web, page):
    page.get_by_text("Advanced: the whole configuration").click()
    kept = web["workspace"] / "datasets" / "sums.jsonl"
    text = wait_text(page, "#advanced", "dataset_name: " + re.escape(str(kept)))
    assert "# method: How the model is adapted" in text and "lora_r: 16" in text  # to_yaml()
    page.locator("#advanced .cm-line", has_text="lora_r: 16").click()
    page.keyboard.press("End")
    page.keyboard.press("Backspace")
    page.keyboard.press("Backspace")
    page.keyboard.type("8")
    page.locator("#run-name input").click()  # blur the editor: its values go to the knobs
    page.wait_for_function("document.querySelector('#knob-lora_r input').value === '8'")
    fill(page, "knob-lora_r", "16")  # and a knob's value goes back to the YAML
    wait_text(page, "#advanced", "lora_r: 16")
    page.get_by_text("Advanced: the whole configuration").click()


def test_bad_input_is_a_message_and_writes_nothing(web, page):
    fill(page, "knob-learning_rate", "fast")
    page.click("#start")
    text = wait_text(page, "#message", "learning_rate")
    assert "learning_rate='fast': must be a positive number, e.g. 2e-4." in text
    no_traceback(page)
    fill(page, "knob-learning_rate", "")
    fill(page, "knob-dataset_name", str(web["data"].parent / "missing.jsonl"))
    page.click("#start")
    text = wait_text(page, "#message", "missing")
    assert "no such file" in text and "missing.jsonl" in text
    no_traceback(page)
    assert sorted(p.name for p in web["workspace"].iterdir()) == ["datasets"]  # no run folder
    fill(page, "knob-dataset_name", str(web["workspace"] / "datasets" / "sums.jsonl"))


def test_estimate_shows_the_dry_run_and_writes_nothing(web, page):
    if not page.input_value("#knob-dataset_name input"):  # run alone: no upload before
        fill(page, "knob-dataset_name", str(web["data"]))
    page.click("#estimate")
    text = wait_text(page, "#estimate-box", "Estimate for this run", timeout=WAIT_MS)
    assert "peak memory" in text and "activations" in text and "steps x" in text
    no_traceback(page)
    assert [p.name for p in web["workspace"].glob("*") if p.name != "datasets"] == []  # no run folder


def test_start_watch_and_finish(web, page):
    fill(page, "run-name", "first")
    page.click("#start")
    wait_text(page, "#message", "Started run")
    assert page.get_by_role("tab", name="Watch").get_attribute("aria-selected") == "true"
    text = wait_text(page, "#watch-status", "Status: (finished|failed)", timeout=WAIT_MS)
    assert "Status: finished" in text and "step 4 / 4" in text, text
    assert "tokens/s" in text
    line = page.locator("#loss-plot polyline[data-series='train']")
    assert line.get_attribute("data-points") == "4"
    assert page.locator("#loss-plot polyline[data-series='eval']").count() == 1
    run = web["workspace"] / "first"
    attempts = json.loads((run / "job.json").read_text())["attempts"]
    assert attempts[0]["exit_code"] == 0
    assert attempts[0]["command"][1:5] == ["-m", "finetuning_suite", "train", "--config"]
    assert (run / "finetuner_config.json").is_file() and (run / "train.log").is_file()
    no_traceback(page)
    shot(web, page, "watch")


def test_stop_saves_a_checkpoint_and_resume_continues(web, page):
    tab(page, "Train")
    fill(page, "knob-max_steps", "5000")
    fill(page, "run-name", "second")
    page.click("#start")
    wait_text(page, "#watch-status", r"Status: running · step [1-9]", timeout=WAIT_MS)
    page.click("#stop")
    text = wait_text(page, "#watch-status", "Status: (stopped|finished|failed)", timeout=WAIT_MS)
    assert "Status: stopped" in text, text
    run = web["workspace"] / "second"
    record = json.loads((run / "finetuner_config.json").read_text())
    first_stop = record["metrics"]["stopped_at_step"]
    assert 0 < first_stop < 5000 and (run / f"checkpoint-{first_stop}").is_dir()
    page.click("#resume")
    wait_text(page, "#message", "Resumed")
    wait_text(page, "#watch-status", r"Status: running · step [1-9]", timeout=WAIT_MS)
    page.click("#stop")
    text = wait_text(page, "#watch-status", "Status: (stopped|finished|failed)", timeout=WAIT_MS)
    assert "Status: stopped" in text, text
    record = json.loads((run / "finetuner_config.json").read_text())
    assert record["metrics"]["stopped_at_step"] > first_stop  # continued, not restarted
    attempts = json.loads((run / "job.json").read_text())["attempts"]
    assert [a["command"][-2:] for a in attempts] == [["--config", str(run / "job.yaml")],
                                                      ["--resume_from_checkpoint", "true"]]
    assert all(a["exit_code"] == 0 for a in attempts)
    tab(page, "Train")
    fill(page, "knob-max_steps", "4")


def test_chat_streams_both_models_with_the_training_template(web, page):
    from finetuning_suite import FineTuner

    tab(page, "Chat")
    choose(page, "chat-model-a", f"base: {web['tiny']}")
    choose(page, "chat-model-b", "run: first")
    page.evaluate("""() => {
        window.seen = new Set();
        const box = document.querySelector('#chat-b');
        new MutationObserver(() => {
            const bots = box.querySelectorAll('.bot, [data-testid="bot"]');
            if (bots.length) window.seen.add(bots[bots.length - 1].innerText);
        }).observe(box, {subtree: true, childList: true, characterData: true});
    }""")
    question = "What is 3 plus 3?"
    fill(page, "chat-input", question)
    page.click("#send")
    page.wait_for_function("""() => {
        const input = document.querySelector('#chat-input textarea, #chat-input input');
        const bots = document.querySelectorAll('#chat-b .bot, #chat-b [data-testid="bot"]');
        return input && input.value === '' && bots.length > 0
            && !bots[bots.length - 1].innerText.includes('…')
            && document.querySelectorAll('#chat-a .bot, #chat-a [data-testid="bot"]').length > 0;
    }""", timeout=60_000)
    time.sleep(1.0)  # the last pieces
    partial = [t for t in page.evaluate("[...window.seen]") if t.strip() and t.strip() != "…"]
    assert len(partial) >= 2, partial  # streamed: the answer grew piece by piece
    shown = page.locator("#chat-b .bot, #chat-b [data-testid='bot']").last.inner_text()
    expected = FineTuner(model_id=str(web["workspace"] / "first"), device="cpu").generate(question)
    alnum = lambda s: re.sub(r"\W+", "", s)  # noqa: E731 - the chatbot renders markdown
    assert alnum(shown) == alnum(expected) and expected.strip()
    left = page.locator("#chat-a .bot, #chat-a [data-testid='bot']").last.inner_text()
    assert alnum(left) == alnum(FineTuner(model_id=web["tiny"], device="cpu").generate(question, 12))
    # the base and a run on it: one loaded base serves both sides
    assert ("pair", web["tiny"], str(web["workspace"] / "first")) in web["app"].page.models.loaded()
    no_traceback(page)
    shot(web, page, "chat")


def test_chat_compares_two_runs_on_one_loaded_base(web, page):
    from finetuning_suite import FineTuner

    choose(page, "chat-model-a", "run: first")
    choose(page, "chat-model-b", "run: second")
    question = "What is 5 plus 5?"
    fill(page, "chat-input", question)
    page.click("#send")
    page.wait_for_function("""() => {
        const input = document.querySelector('#chat-input textarea, #chat-input input');
        const done = side => {
            const bots = document.querySelectorAll(`#chat-${side} .bot, #chat-${side} [data-testid="bot"]`);
            return bots.length > 0 && !bots[bots.length - 1].innerText.includes('…');
        };
        return input && input.value === '' && done('a') && done('b');
    }""", timeout=60_000)
    time.sleep(1.0)  # the last pieces
    alnum = lambda s: re.sub(r"\W+", "", s)  # noqa: E731 - the chatbot renders markdown
    for side, run in (("a", "first"), ("b", "second")):
        shown = page.locator(f"#chat-{side} .bot, #chat-{side} [data-testid='bot']").last.inner_text()
        expected = FineTuner(model_id=str(web["workspace"] / run), device="cpu").generate(question, 12)
        assert alnum(shown) == alnum(expected), (side, shown, expected)
    pair = ("pair", str(web["workspace"] / "first"), str(web["workspace"] / "second"))
    assert pair in web["app"].page.models.loaded()
    no_traceback(page)


def test_export_adapter_shows_the_paths(web, page):
    tab(page, "Export")
    choose(page, "export-run", "first")
    page.get_by_label("adapter only").check()
    page.click("#export-button")
    text = wait_text(page, "#export-result", "adapter_model.safetensors", timeout=60_000)
    folder = web["workspace"] / "exports" / "first-adapter-only"
    assert str(folder / "adapter_model.safetensors") in text
    assert (folder / "adapter_model.safetensors").is_file() and (folder / "adapter_config.json").is_file()
    assert "Exported" in page.inner_text("#message")
    shot(web, page, "export")


def test_reload_keeps_runs_and_compares_two(web, page):
    page.reload()
    page.wait_for_selector("#start")
    tab(page, "Runs")
    table = wait_text(page, "#runs-table", "second")
    assert re.search(r"first\s+finished", table) and re.search(r"second\s+stopped", table), table
    choose(page, "compare-a", "first")
    choose(page, "compare-b", "second")
    page.click("#compare")
    page.wait_for_selector("#compare-plot polyline[data-series='second train']")
    assert page.locator("#compare-plot polyline[data-series='first train']").count() == 1
    metrics = page.inner_text("#compare-metrics")
    assert "exact_match" in metrics and "perplexity" in metrics and "final train loss" in metrics
    samples = page.inner_text("#compare-samples")
    assert "plus" in samples  # prompts of the eval split, with both runs' answers
    no_traceback(page)
    shot(web, page, "runs")
    tab(page, "Watch")
    assert wait_text(page, "#watch-status", "Status:")  # the latest run, read back from disk


def test_nothing_left_the_machine(page):
    assert page.blocked == []
