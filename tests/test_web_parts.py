"""The parts of `finetune web` that need no browser: the form is the configuration (its help,
its types, its messages), a job's error is read from its log as one message, a run's status
comes from its files, a job is found again by a new registry (and a reused pid is not), the
loss chart, and the `finetune web` command's guards. The page itself: `test_web.py`."""
from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time

import pytest

from finetuning_suite.config import SECTIONS, FinetuneConfig
from finetuning_suite.errors import ConfigError
from finetuning_suite.web import charts, form, runs
from finetuning_suite.web.jobs import JobRegistry, _process_matches


# -- the form ---------------------------------------------------------------------------------
def test_the_pages_knobs_show_the_configs_help_and_choices(tmp_path):
    """The widgets the page builds (not the form's own table) carry each field's help text, its
    starting value and, for a choice, the configuration's choices: the page cannot drift from
    the configuration."""
    from finetuning_suite.web.app import create_app

    app = create_app(FinetuneConfig.from_flat({"lora_r": 8}), tmp_path)
    widgets = {b.elem_id: b for b in app.blocks.values() if getattr(b, "elem_id", None)}
    fields = {f.name: f for cls in SECTIONS.values() for f in dataclasses.fields(cls)}
    for name in form.KNOBS:
        widget = widgets[f"knob-{name}"]
        assert widget.info == fields[name].metadata["help"] != "", name
    assert [c[0] for c in widgets["knob-method"].choices] == ["lora", "qlora", "full"]
    assert widgets["knob-lora_r"].value == "8"  # the page's starting config, as text
    assert widgets["knob-self_replay"].value is True


@pytest.mark.parametrize("name, text, value", [
    ("learning_rate", "2e-4", 2e-4), ("learning_rate", "", None), ("learning_rate", "fast", "fast"),
    ("lora_r", "8", 8), ("lora_r", "", 16), ("lora_r", "8.5", "8.5"), ("max_steps", "-1", -1),
    ("lora_target_modules", "q_proj, v_proj", ["q_proj", "v_proj"]),
    ("column_map", "{question: prompt}", {"question": "prompt"}), ("eval_before", "true", True),
    ("max_grad_norm", "0.5", 0.5), ("adam_epsilon", "1e-8", 1e-8),  # TrainingArguments pass-through
])
def test_text_becomes_the_fields_type_or_stays_for_validation(name, text, value):
    assert form.coerce(name, text) == value


def test_bad_values_are_the_configs_own_messages():
    flat = form.merge(FinetuneConfig().to_flat(), {"learning_rate": "fast", "lora_r": "0",
                                                     "lora_task_type": "CAUSAL"})
    with pytest.raises(ConfigError) as info:
        form.build_config(flat)
    assert "learning_rate='fast': must be a positive number, e.g. 2e-4." in str(info.value)
    assert "lora_r=0" in str(info.value)
    flat["learning_rate"], flat["lora_r"] = None, 16
    with pytest.raises(ConfigError, match=r"lora_task_type='CAUSAL': must be one of"):
        form.build_config(flat)


def test_the_yaml_box_round_trips_and_reports_its_line():
    flat = form.merge(FinetuneConfig().to_flat(), {"lora_r": "8", "learning_rate": "1e-3"})
    text = form.to_yaml(flat)
    assert "lora_r: 8" in text and "learning_rate: 0.001" in text
    assert form.parse_yaml(text) == FinetuneConfig.from_flat(flat).to_flat()
    with pytest.raises(ConfigError, match=r"line 2, column"):
        form.parse_yaml("lora_r: 8\n  bad: [\n")
    with pytest.raises(ConfigError, match=r"unknown option\(s\) 'lora_alhpa' \(did you mean 'lora_alpha'\?\)"):
        form.to_yaml({"lora_alhpa": 8})


# -- a job's error, from its log ---------------------------------------------------------------
def test_last_error_is_the_commands_message_or_a_tracebacks_last_line():
    log = ("==== finetune web: 1 ====\nINFO loading\n"
           "error: finetune train: 2 invalid arguments:\n  - lora_r=0: must be 16\n"
           "  - top_p=2: must be in (0, 1]\nafter\n")
    assert runs.last_error(log) == ("finetune train: 2 invalid arguments:\n  - lora_r=0: must be 16\n"
                                    "  - top_p=2: must be in (0, 1]")
    crash = 'Traceback (most recent call last):\n  File "x.py", line 1\n    boom()\nRuntimeError: boom\n'
    assert runs.last_error("INFO x\n" + crash) == "RuntimeError: boom"
    assert runs.last_error("INFO all good\n") is None


# -- a run's status, from its files ------------------------------------------------------------
def _run(tmp_path, name, *, record=None, attempts=None, metrics=(), log=""):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.yaml").write_text("model_id: m\nmethod: lora\ndataset_name: d.jsonl\n")
    if record is not None:
        (folder / "finetuner_config.json").write_text(json.dumps(record))
    if attempts is not None:
        (folder / "job.json").write_text(json.dumps({"attempts": attempts}))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (folder / "train.log").write_text(log)
    return folder


def test_status_comes_from_the_files(tmp_path):
    now = time.time()
    start = {"event": "start", "step": 0, "time": now - 10, "max_steps": 10}
    done = _run(tmp_path, "done", record={"metrics": {"after": {"exact_match": 0.5, "samples": []}}},
                attempts=[{"pid": 1, "started": now - 20, "ended": now, "exit_code": 0}],
                metrics=[start, {"event": "train", "step": 10, "loss": 1.5, "tokens_per_s": 99.0}])
    info = runs.read_run(done)
    assert (info.status, info.step, info.max_steps, info.loss, info.after) == \
        ("finished", 10, 10, 1.5, {"exact_match": 0.5})
    stopped = _run(tmp_path, "stopped", record={"metrics": {"stopped_at_step": 3}},
                   attempts=[{"pid": 1, "started": now - 20, "ended": now, "exit_code": 0}])
    (stopped / "checkpoint-3").mkdir()
    assert runs.read_run(stopped).status == "stopped" and runs.read_run(stopped).can_resume
    failed = _run(tmp_path, "failed", attempts=[{"pid": 1, "started": now, "exit_code": 2}],
                  log="error: dataset_name='x.jsonl': no such file or folder.\n")
    info = runs.read_run(failed)
    assert info.status == "failed" and info.error == "dataset_name='x.jsonl': no such file or folder."
    running = _run(tmp_path, "running", attempts=[{"pid": 1, "started": now - 12}],
                   metrics=[start, {"event": "train", "step": 5, "loss": 2.0}])
    info = runs.read_run(running, alive=True, now=now)
    assert info.status == "running" and info.eta_s == pytest.approx(10.0)
    assert runs.read_run(running, alive=True, now=now).alive
    loading = _run(tmp_path, "loading", attempts=[{"pid": 1, "started": now}], metrics=[start])
    assert runs.read_run(loading, alive=True).status == "starting"  # start event of an older attempt
    assert [p.name for p in runs.run_folders(tmp_path)][:1] == ["loading"]  # newest first
    (tmp_path / "datasets").mkdir()
    assert "datasets" not in [p.name for p in runs.run_folders(tmp_path)]


def test_loss_series_keeps_the_latest_value_of_a_step(tmp_path):
    folder = _run(tmp_path, "r", metrics=[
        {"event": "train", "step": 1, "loss": 3.0}, {"event": "train", "step": 2, "loss": 2.0},
        {"event": "eval", "step": 2, "eval_loss": 2.5}, {"event": "train", "step": 2, "loss": 1.9}])
    assert runs.loss_series(folder, "r") == {"r train": [(1, 3.0), (2, 1.9)], "r eval": [(2, 2.5)]}


# -- jobs are found again ----------------------------------------------------------------------
def test_a_new_registry_finds_a_running_job_and_stops_it(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    config = str(run / "job.yaml")
    # stands in for `python -m finetuning_suite train --config <run>/job.yaml`
    command = [sys.executable, "-c", "import time; time.sleep(60)", "finetuning_suite", "--config", config]
    # as the registry starts jobs: SIGINT at its default even when this test runs in the background
    proc = subprocess.Popen(command, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 10  # until the child has exec'd: before that /proc shows our own command
    while not _process_matches(proc.pid, command) and time.time() < deadline:
        time.sleep(0.05)
    try:
        (run / "job.json").write_text(json.dumps({"attempts": [
            {"command": command, "pid": proc.pid, "started": time.time(), "exit_code": None}]}))
        registry = JobRegistry(tmp_path)  # knows nothing but the workspace
        assert registry.alive(run)
        assert not _process_matches(proc.pid, command[:-1] + [str(tmp_path / "other.yaml")])
        assert "Cancelled" in registry.stop(run)  # no training step yet: interrupted
        proc.wait(10)
        assert not registry.alive(run)
    finally:
        proc.kill()


def test_start_refuses_a_folder_in_use_and_leaves_it_as_it_was(tmp_path):
    run = tmp_path / "taken"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already holds files"):
        JobRegistry(tmp_path).start(FinetuneConfig(), run)
    assert [p.name for p in run.iterdir()] == ["notes.txt"]


# -- the chart --------------------------------------------------------------------------------
def test_the_chart_draws_every_series_and_says_when_there_is_none():
    svg = charts.line_chart({"train": [(1, 3.0), (2, 2.0), (3, 1.5)], "eval": [(3, 2.2)]})
    assert svg.count("<polyline") == 2 and "data-series='eval' data-points='1'" in svg
    assert "No values yet." in charts.line_chart({"train": []})
    assert charts.nice_ticks(0.0, 1.0) == [0.0, 0.25, 0.5, 0.75, 1.0]


# -- the command ------------------------------------------------------------------------------
def test_finetune_web_refuses_the_network_without_a_password(capsys, monkeypatch):
    from finetuning_suite.cli.main import main
    from finetuning_suite.cli.hosts import is_loopback

    monkeypatch.delenv("FINETUNE_WEB_PASSWORD", raising=False)
    assert main(["web", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "--host 0.0.0.0" in err and "--password" in err and "Traceback" not in err
    assert main(["web", "--port", "70000"]) == 2
    assert "--port 70000" in capsys.readouterr().err
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")


def test_finetune_web_without_gradio_says_how_to_install_it(capsys, monkeypatch):
    from finetuning_suite.cli.main import main

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    assert main(["web"]) == 2
    assert capsys.readouterr().err.strip() == \
        "error: finetune web needs gradio: pip install 'finetuning_suite[web]'"


# -- the chat's models ----------------------------------------------------------------------------
def _saved_run(tiny_llama, path, seed: int, **settings) -> str:
    """A run folder holding a fresh adapter with random LoRA B weights (answers of its own)."""
    import torch

    from finetuning_suite import FineTuner

    ft = FineTuner(tiny_llama, device="cpu", **settings)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in ft.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    ft.save(path)
    return str(path)


def test_chat_sides_on_one_base_share_one_loaded_base(tiny_llama, tiny_gpt2, tmp_path):
    """Two runs on one base (or the base and a run) are one AdapterSet in the cache: one base,
    both adapters, one lock; each side answers as its own FineTuner. Models of different bases
    stay two FineTuners."""
    from finetuning_suite import FineTuner
    from finetuning_suite.web.app import _side_stream
    from finetuning_suite.web.models import ModelCache

    a = _saved_run(tiny_llama, tmp_path / "a", 1, max_length=9)
    b = _saved_run(tiny_llama, tmp_path / "b", 2, max_length=7, system_prompt="Be brief.")
    history = [{"role": "user", "content": "What is the capital of France?"}]
    limits = {a: 9, b: 7, tiny_llama: 8}
    expected = {m: FineTuner(m, device="cpu").generate(history[0]["content"], limits[m]) for m in limits}
    assert len(set(expected.values())) == 3
    cache = ModelCache(capacity=2, device="cpu")

    def answers(left, right):
        sides = cache.chat_pair(left, right)
        return sides, ["".join(_side_stream(side, history, limits[m])) for side, m in zip(sides, (left, right))]

    sides, texts = answers(a, b)
    assert sides[0].lock is sides[1].lock and sides[0].model.model is sides[1].model.model
    assert texts == [expected[a], expected[b]]
    assert [side.model.max_length for side in sides] == [9, 7]  # each run's own settings
    assert cache.loaded() == [("pair", a, b)]  # no FineTuner of its own for either run
    sides, texts = answers(tiny_llama, a)  # the base and a run on it
    assert sides[0].lock is sides[1].lock and texts == [expected[tiny_llama], expected[a]]
    limits[tiny_gpt2] = 8
    sides, _ = answers(tiny_gpt2, a)  # another base: two models, two locks
    assert sides[0].lock is not sides[1].lock and sides[0].model.model is not sides[1].model.model
    cache.forget(a)
    assert cache.loaded() == [tiny_gpt2]
