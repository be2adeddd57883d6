"""The page: `create_app(config, workspace)` builds it, `launch(...)` serves it.

Five tabs over one workspace folder of runs:

- Train: model, dataset (upload or path/name), a preview of the first rows as the model sees
  them, method and the main knobs (labels, help and values from `finetuning_suite.config`), the
  whole resolved configuration as editable YAML ("Advanced"), and Start: the configuration is
  validated here (and the dataset, the model's tokenizer and the first rows checked) before
  anything is written, then `jobs` runs `python -m finetuning_suite train` in its own process.
  Estimate shows what `finetune train --dry_run` prints: the run's peak memory and time.
- Watch: step, ETA, tokens/s, train/eval loss curve and the log of a run, refreshed every
  second from its files; Stop (a checkpoint, then the normal final save) and Resume.
- Runs: every run folder in the workspace with its numbers; two side by side (loss curves,
  before/after metrics, recorded sample generations).
- Chat: two models side by side (a base model and a trained run, or two runs), answers
  streamed, each with its own chat template as trained; runs on one base share one loaded base
  (`models.ModelCache.chat_pair`).
- Export: a run as a merged model folder, its adapter alone, or GGUF (`FineTuner.export`).

Every handler turns errors into a message on the page (`messages`), never a traceback.
"""
from __future__ import annotations

import hashlib
import html
import re
import shutil
import time
from pathlib import Path

import gradio as gr
import pandas as pd

from ..config import FinetuneConfig
from ..errors import ConfigError
from . import form
from ..export.api import GGUF_TYPES
from .charts import line_chart
from .jobs import JobRegistry, dry_run_text
from .messages import error_markdown, error_text
from .models import ModelCache
from .preview import PREVIEW_ROWS, Preview, TokenizerCache, check_model_settings, preview
from .runs import (LOG_FILE, RESERVED, RunInfo, base_model, log_text, loss_series, read_run,
                   reward_series, run_folders, samples)

TITLE = "finetuning_suite"
EMBEDDED_LABEL = "embedded SmolLM2-135M-Instruct"
# The export kinds of `export.api.GGUF_TYPES`, each with the merged folder it is made from.
EXPORT_KINDS = {"merged model folder": (True, None), "adapter only": (False, None),
                **{f"GGUF {kind} (+ merged folder)": (True, kind) for kind in GGUF_TYPES}}
DATA_SUFFIXES = [".jsonl", ".json", ".csv", ".parquet", ".txt"]
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
LOG_LINES = 15
COMPARED_METRICS = ("loss", "perplexity", "exact_match", "chrf", "eos_rate", "n")

CSS = """
.preview pre {white-space: pre-wrap; word-break: break-word; margin: 4px 0 12px; padding: 8px;
              border: 1px solid var(--border-color-primary); border-radius: 6px; font-size: 13px;}
.preview mark.loss {background: #bbf7d0; color: #14532d; border-radius: 3px;}
.preview .prompt {color: var(--body-text-color-subdued);}
.preview .row-head {font-size: 12px; color: var(--body-text-color-subdued);}
#message:empty {display: none;}
"""


class Page:
    """What the handlers share: the workspace, its jobs, and models kept in this process."""

    def __init__(self, config: FinetuneConfig, workspace, device: str | None = None):
        self.config = config
        self.workspace = Path(workspace).expanduser().resolve()
        self.jobs = JobRegistry(self.workspace)
        self.models = ModelCache(capacity=2, **({"device": device} if device else {}))
        self.tokenizers = TokenizerCache()
        self.base_flat = config.to_flat()

    # -- runs ---------------------------------------------------------------------------------
    def runs(self) -> list[RunInfo]:
        return [read_run(p, alive=self.jobs.alive(p)) for p in run_folders(self.workspace)]

    def run_dir(self, name: str | None) -> Path:
        if not name:
            raise ConfigError("No run chosen: pick one from the list (start one on the Train tab).")
        path = self.workspace / name
        if not path.is_dir():
            raise ConfigError(f"run {name!r}: no such folder in the workspace {str(self.workspace)!r}; "
                              "pick one from the list.")
        return path

    def model_choices(self, infos: list[RunInfo]) -> list[tuple[str, str]]:
        """Chat choices: base models (the page's, and those runs started from), then runs."""
        bases: list[str | None] = [self.config.model.model_id]
        for info in infos:
            base = base_model(info)
            if base not in bases:
                bases.append(base)
        choices = [(f"base: {b or EMBEDDED_LABEL}", f"base:{b or ''}") for b in bases]
        choices += [(f"run: {i.name}", f"run:{i.name}") for i in infos if i.complete]
        return choices

    def model_id(self, choice: str | None) -> str | None:
        if not choice:
            raise ConfigError("No model chosen: pick one from the list.")
        kind, _, value = choice.partition(":")
        if kind == "run":
            return str(self.run_dir(value))
        return value or None

    # -- datasets -----------------------------------------------------------------------------
    def keep_upload(self, temp_path: str) -> Path:
        """Copy an uploaded file into <workspace>/datasets/ (gradio's temp files do not last,
        and a resumed run reads its dataset again); the same content is kept once."""
        src = Path(temp_path)
        if src.suffix.lower() not in DATA_SUFFIXES:
            raise ConfigError(f"{src.name!r}: not a dataset file this package reads; upload one of "
                              f"{', '.join(DATA_SUFFIXES)}.")
        folder = self.workspace / "datasets"
        folder.mkdir(parents=True, exist_ok=True)
        digest = _sha256(src)
        stem, suffix = src.stem, src.suffix.lower()
        for i in range(1000):
            target = folder / (f"{stem}{suffix}" if i == 0 else f"{stem}-{i}{suffix}")
            if not target.exists():
                shutil.copyfile(src, target)
                return target
            if _sha256(target) == digest:
                return target
        raise ConfigError(f"too many uploads named {src.name!r}; rename the file.")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- rendering ---------------------------------------------------------------------------------
def preview_html(p: Preview) -> str:
    held = f" (+{p.eval_rows} held out for evaluation)" if p.eval_rows else ""
    held += f"; evaluation uses {html.escape(p.eval_note)}" if p.eval_note and not p.eval_rows else ""
    head = (f"{p.total_rows} training rows{held} · format <b>{html.escape(p.format)}</b> · "
            f"chat template: {'yes' if p.stats.get('chat_template') else 'no'} · "
            f"max_seq_length {p.stats.get('max_seq_length')} · model {html.escape(str(p.source))}. "
            "The first rows exactly as the model reads them; "
            "<mark class='loss'>highlighted</mark> tokens carry the loss (what it learns to say).")
    parts = [f"<div class='preview'><div class='preview-head'>{head}</div>"]
    for i, row in enumerate(p.rows, 1):
        spans = "".join(
            f"<mark class='loss'>{html.escape(text)}</mark>" if trained
            else f"<span class='prompt'>{html.escape(text)}</span>" for text, trained in row.segments)
        parts.append(f"<div class='row-head'>row {i}: {row.tokens} tokens, {row.trained_tokens} "
                     f"with loss</div><pre class='tokens'>{spans}</pre>")
    if len(p.rows) < min(PREVIEW_ROWS, p.total_rows):
        parts.append("<div class='row-head'>Some of the first rows have no token with loss "
                     "(no answer within max_seq_length) and are dropped in training.</div>")
    return "".join(parts) + "</div>"


def log_tail(path: Path, lines: int = LOG_LINES) -> str:
    """The last lines of a run's log as a terminal would show them (a progress bar's
    carriage-return updates collapsed to their latest state)."""
    text = log_text(path, attempt_only=False, limit=20_000)
    shown = [line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n")]
    return "\n".join([line for line in shown if line.strip()][-lines:])


def _num(value, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _duration(seconds) -> str:
    if seconds is None:
        return "—"
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def status_markdown(info: RunInfo) -> str:
    steps = f"{info.step if info.step is not None else 0} / {info.max_steps or '?'}"
    lines = [f"### {info.name}",
             f"**Status: {info.status}** · step {steps} · ETA {_duration(info.eta_s) if info.alive else '—'}"
             f" · {_num(info.tokens_per_s, 5)} tokens/s · train loss {_num(info.loss)}"
             f" · eval loss {_num(info.eval_loss)} · time {_duration(info.job_s or info.elapsed_s)}",
             f"model `{info.model or EMBEDDED_LABEL}` · method `{info.method or '?'}` · "
             f"dataset `{info.dataset or '?'}` · checkpoints {info.checkpoints}"]
    if info.status == "starting":
        lines.append("Loading the model and the data (the first step has not run yet).")
    if info.status == "stopped":
        lines.append("Stopped on request: a checkpoint was saved and the model as it was then. "
                     "**Resume** continues the remaining steps.")
    if info.status == "interrupted" and info.checkpoints:
        lines.append("Interrupted before its final save. **Resume** continues from the last checkpoint.")
    if info.complete:
        lines.append(f"Saved in `{info.path}` (report: `{info.path / 'report.html'}`).")
    if info.retention:
        lines.append(f"Retention: {info.retention.get('line')}."
                     + (f" **{info.retention['warning']}**" if info.retention.get("warning") else ""))
    if info.error:  # a failure as an error; an interruption as what the job said
        lines.append(error_markdown(info.error) if info.status == "failed" else info.error)
    return "\n\n".join(lines)


def watch_chart(path: Path, name: str) -> str:
    chart = line_chart(loss_series(path), title=f"Loss: {name}",
                       empty="No loss logged yet: the first value comes after logging_steps steps.")
    rewards = reward_series(path)
    if rewards:  # preference and reward stages: their rewards, per step
        chart += line_chart(rewards, title=f"Rewards: {name}", y_label="reward")
    return chart


def runs_frame(infos: list[RunInfo]) -> pd.DataFrame:
    rows = []
    for i in infos:
        after = i.after or {}
        rows.append({
            "run": i.name, "status": i.status,
            "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(i.created)) if i.created else "",
            "model": _short(i.model) or "embedded", "method": i.method or "",
            "dataset": _short(i.dataset),
            "steps": f"{i.step if i.step is not None else 0}/{i.max_steps or '?'}",
            "train loss": _num(i.loss), "eval loss": _num(i.eval_loss),
            "exact match": _num(after.get("exact_match")), "general kept": _kept(i.retention),
            "tokens/s": _num(i.tokens_per_s, 5), "time": _duration(i.job_s or i.elapsed_s)})
    columns = ["run", "status", "started", "model", "method", "dataset", "steps", "train loss",
               "eval loss", "exact match", "general kept", "tokens/s", "time"]
    return pd.DataFrame(rows, columns=columns)


def _kept(retention: dict | None) -> str:
    """The retention probe's result as the Runs table shows it: "38/40" (with a warning sign
    when the run warned)."""
    if not retention or not retention.get("base_right"):
        return "—"
    mark = " ⚠" if retention.get("warning") else ""
    return f"{retention['kept']}/{retention['base_right']}{mark}"


def compare_metrics(a: RunInfo, b: RunInfo) -> pd.DataFrame:
    found = set(a.before) | set(a.after) | set(b.before) | set(b.after)
    names = [n for n in COMPARED_METRICS if n in found]
    rows = [{"metric": n, f"{a.name} before": _num(a.before.get(n)), f"{a.name} after": _num(a.after.get(n)),
             f"{b.name} before": _num(b.before.get(n)), f"{b.name} after": _num(b.after.get(n))}
            for n in names]
    for label, key in (("final train loss", "loss"), ("eval loss", "eval_loss")):
        rows.append({"metric": label, f"{a.name} before": "", f"{a.name} after": _num(getattr(a, key)),
                     f"{b.name} before": "", f"{b.name} after": _num(getattr(b, key))})
    return pd.DataFrame(rows)


def compare_samples(a: RunInfo, b: RunInfo) -> pd.DataFrame:
    by_prompt: dict[str, dict] = {}
    for info, side in ((a, "a"), (b, "b")):
        for which in ("before", "after"):
            for s in samples(info.record, which):
                row = by_prompt.setdefault(str(s.get("prompt")), {"reference": s.get("reference")})
                row[f"{side} {which}"] = s.get("generated")
    keys = ["a after", "b after", "a before", "b before"]  # the trained answers first
    columns = ["prompt", "reference"] + [f"{(a if k[0] == 'a' else b).name} {k[2:]}" for k in keys]
    rows = [{"prompt": p, "reference": r.get("reference"),
             **{column: r.get(k) for column, k in zip(columns[2:], keys)}}
            for p, r in by_prompt.items()]
    return pd.DataFrame(rows, columns=columns)


def _short(value) -> str:
    """A path shown by its last part (the full path is on the Watch tab)."""
    if not value:
        return ""
    text = str(value)
    return Path(text).name if "/" in text and not text.startswith("embedded:") else text


def _auto_run_name(dataset) -> str:
    stem = Path(str(dataset or "run")).stem or "run"
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "run"
    return f"{stem[:40]}-{time.strftime('%Y%m%d-%H%M%S')}"


def _knob_widget(name: str, value):
    k = form.knob(name)
    if k.kind == "bool":
        return gr.Checkbox(label=name, info=k.help, value=bool(value), elem_id=f"knob-{name}")
    if k.kind == "choice":
        return gr.Dropdown(label=name, info=k.help, choices=list(k.choices), value=value,
                           elem_id=f"knob-{name}")
    return gr.Textbox(label=name, info=k.help, value=form.as_text(value), elem_id=f"knob-{name}",
                      placeholder="(empty)" if k.optional else None, max_lines=1)


# -- the page ------------------------------------------------------------------------------------
def create_app(config: FinetuneConfig | None = None, workspace="runs", *, device: str | None = None,
               timer_s: float = 1.0) -> gr.Blocks:
    """The page over `workspace` (created when needed); `config` gives the form's starting
    values (default: the configuration's own defaults)."""
    page = Page(config or FinetuneConfig(), workspace, device)
    start_flat = dict(page.base_flat)
    with gr.Blocks(title=f"{TITLE} · fine-tune", analytics_enabled=False) as app:
        gr.Markdown(f"## {TITLE}: fine-tune, watch, compare, chat, export\n"
                    f"Workspace: `{page.workspace}` (one folder per run). The same training as "
                    "`finetune train`; every setting is a field of the one configuration.")
        message = gr.Markdown(elem_id="message")
        with gr.Tabs(selected="train") as tabs:
            # ---------------------------------------------------------------- Train
            with gr.Tab("Train", id="train"):
                knobs: dict[str, gr.components.Component] = {}
                with gr.Row():
                    knobs["model_id"] = _knob_widget("model_id", start_flat["model_id"])
                    knobs["method"] = _knob_widget("method", start_flat["method"])
                with gr.Row():
                    upload = gr.File(label="Upload a dataset (" + " ".join(DATA_SUFFIXES) + ")",
                                     file_types=DATA_SUFFIXES, type="filepath", elem_id="upload",
                                     height=110)
                    with gr.Column():
                        knobs["dataset_name"] = _knob_widget("dataset_name", start_flat["dataset_name"])
                        preview_button = gr.Button("Preview the first rows", size="sm", elem_id="preview-button")
                preview_box = gr.HTML(elem_id="preview")
                with gr.Accordion("Main settings", open=True):
                    names = [n for n in form.MAIN_KNOBS if n != "method"]
                    for i in range(0, len(names), 4):
                        with gr.Row():
                            for name in names[i:i + 4]:
                                knobs[name] = _knob_widget(name, start_flat[name])
                with gr.Accordion("Advanced: the whole configuration (YAML, editable)", open=False):
                    gr.Markdown("The resolved configuration, as `finetune train --print_config` "
                                "writes it (`null`: chosen automatically). Edits here are used by "
                                "Start; `output_dir` is set from the run name.")
                    advanced = gr.Code(value=form.to_yaml(start_flat), language="yaml",
                                       interactive=True, lines=18, max_lines=40, elem_id="advanced")
                with gr.Row(equal_height=True):
                    run_name = gr.Textbox(label="Run name", elem_id="run-name", max_lines=1, scale=3,
                                          info="The run's folder in the workspace. Empty: the "
                                               "dataset's name and the time.")
                    estimate_button = gr.Button("Estimate memory and time", elem_id="estimate", scale=1)
                    start_button = gr.Button("Start training", variant="primary", elem_id="start", scale=1)
                estimate_box = gr.Markdown(elem_id="estimate-box")
            # ---------------------------------------------------------------- Watch
            with gr.Tab("Watch", id="watch"):
                with gr.Row(equal_height=True):
                    watch_run = gr.Dropdown(label="Run", choices=[], elem_id="watch-run", scale=3)
                    stop_button = gr.Button("Stop (saves a checkpoint)", elem_id="stop", scale=1)
                    resume_button = gr.Button("Resume", elem_id="resume", scale=1)
                watch_status = gr.Markdown(elem_id="watch-status")
                watch_plot = gr.HTML(elem_id="loss-plot")
                watch_log = gr.Textbox(label=f"Log ({LOG_FILE}, last lines)", lines=LOG_LINES, max_lines=LOG_LINES,
                                       interactive=False, elem_id="watch-log", autoscroll=True)
                watch_sig = gr.State(None)
                timer = gr.Timer(timer_s)
            # ---------------------------------------------------------------- Runs
            with gr.Tab("Runs", id="runs") as runs_tab:
                refresh_button = gr.Button("Refresh", size="sm")
                runs_table = gr.Dataframe(runs_frame([]), interactive=False, elem_id="runs-table",
                                          wrap=True)
                gr.Markdown("**Compare two runs**")
                with gr.Row(equal_height=True):
                    run_a = gr.Dropdown(label="Run A", choices=[], elem_id="compare-a")
                    run_b = gr.Dropdown(label="Run B", choices=[], elem_id="compare-b")
                    compare_button = gr.Button("Compare", elem_id="compare")
                compare_plot = gr.HTML(elem_id="compare-plot")
                compare_table = gr.Dataframe(pd.DataFrame(columns=["metric", "A before", "A after", "B before", "B after"]),
                                             interactive=False, elem_id="compare-metrics",
                                             label="Before / after evaluation (train with eval_before)")
                compare_sample_table = gr.Dataframe(pd.DataFrame(columns=["prompt", "reference", "A", "B"]),
                                                    interactive=False, wrap=True, elem_id="compare-samples",
                                                    label="Sample generations side by side")
            # ---------------------------------------------------------------- Chat
            with gr.Tab("Chat", id="chat") as chat_tab:
                with gr.Row():
                    chat_model_a = gr.Dropdown(label="Left model", choices=[], elem_id="chat-model-a")
                    chat_model_b = gr.Dropdown(label="Right model", choices=[], elem_id="chat-model-b")
                with gr.Row():
                    chat_a = gr.Chatbot(label="Left", elem_id="chat-a", height=340)
                    chat_b = gr.Chatbot(label="Right", elem_id="chat-b", height=340)
                with gr.Row(equal_height=True):
                    chat_input = gr.Textbox(show_label=False, placeholder="Message both models",
                                            elem_id="chat-input", scale=5, max_lines=4)
                    send_button = gr.Button("Send", variant="primary", elem_id="send", scale=1)
                    clear_button = gr.Button("Clear", elem_id="clear", scale=1)
                chat_max = gr.Number(label="max_length", info=form.help_text("max_length"),
                                     value=start_flat["max_length"], precision=0, elem_id="chat-max")
                history = gr.State({"a": [], "b": []})
            # ---------------------------------------------------------------- Export
            with gr.Tab("Export", id="export") as export_tab:
                with gr.Row():
                    export_run = gr.Dropdown(label="Run", choices=[], elem_id="export-run")
                    export_kind = gr.Radio(list(EXPORT_KINDS), value="merged model folder",
                                           label="What to write", elem_id="export-kind",
                                           info="merged: a plain transformers folder, adapter merged "
                                                "in; adapter only: the PEFT adapter folder; GGUF: also "
                                                "a llama.cpp file and an Ollama Modelfile (Llama models).")
                with gr.Row(equal_height=True):
                    export_dir = gr.Textbox(label="Folder", elem_id="export-dir", scale=3,
                                            info="Empty: <workspace>/exports/<run>-<kind>.")
                    export_overwrite = gr.Checkbox(label="overwrite", value=False, elem_id="export-overwrite",
                                                   info="Replace an existing non-empty folder entirely.")
                    export_button = gr.Button("Export", variant="primary", elem_id="export-button")
                export_result = gr.Dataframe(pd.DataFrame(columns=["file", "path"]),
                                             interactive=False, elem_id="export-result",
                                             label="Written files")

        knob_names = list(form.KNOBS)
        knob_list = [knobs[n] for n in knob_names]

        # -- Train handlers ---------------------------------------------------------------------
        def current_flat(yaml_text, values) -> dict:
            flat = form.merge(form.parse_yaml(yaml_text), dict(zip(knob_names, values)))
            for name in ("overwrite_output_dir", "resume_from_checkpoint"):
                if flat.get(name) not in (None, False):
                    raise ConfigError(f"{name}={flat[name]!r}: the page starts each run in a new "
                                      "folder; to continue a run use Resume on the Watch tab.")
            return flat

        def knobs_to_yaml(yaml_text, *values):
            try:
                flat = current_flat(yaml_text, values)
                return form.to_yaml(flat), gr.skip()  # (an earlier message stays until the next action)
            except Exception as exc:  # noqa: BLE001
                return gr.skip(), error_markdown(error_text(exc))

        def yaml_to_knobs(yaml_text):
            try:
                flat = form.parse_yaml(yaml_text)
                form.FinetuneConfig.from_flat(flat, where="Advanced configuration")
            except Exception as exc:  # noqa: BLE001
                return [gr.skip()] * len(knob_names) + [error_markdown(error_text(exc))]
            out = []
            for name in knob_names:
                if name not in flat:
                    out.append(gr.skip())
                    continue
                kind = form.knob(name).kind
                value = flat[name]
                out.append(value if kind in ("bool", "choice") else form.as_text(value))
            return out + [gr.skip()]

        def show_preview(yaml_text, *values):
            try:
                flat = current_flat(yaml_text, values)
                config = FinetuneConfig.from_flat(flat, where="finetune web")
                return preview_html(preview(config, cache=page.tokenizers)), ""
            except Exception as exc:  # noqa: BLE001
                return "", error_markdown(error_text(exc))

        def on_upload(file, yaml_text, *values):
            if not file:
                return gr.skip(), gr.skip(), gr.skip(), gr.skip()
            try:
                kept = page.keep_upload(file)
            except Exception as exc:  # noqa: BLE001
                return gr.skip(), gr.skip(), gr.skip(), error_markdown(error_text(exc))
            values = list(values)
            values[knob_names.index("dataset_name")] = str(kept)
            yaml_out, msg = knobs_to_yaml(yaml_text, *values)
            if not isinstance(yaml_out, str):  # the form has a problem: say it, no preview
                return str(kept), gr.skip(), "", msg
            shown, msg = show_preview(yaml_out, *values)
            return str(kept), yaml_out, shown, msg

        def start(yaml_text, name, *values):
            try:
                flat = current_flat(yaml_text, values)
                name = (name or "").strip() or _auto_run_name(flat.get("dataset_name"))
                if not RUN_NAME.match(name) or name in RESERVED:
                    raise ConfigError(f"run name {name!r}: use letters, digits, '.', '_' and '-' "
                                      f"(not {' or '.join(RESERVED)}), e.g. facts-lora-1.")
                run_dir = page.workspace / name
                if run_dir.exists():
                    raise ConfigError(f"run name {name!r} is taken (the folder {str(run_dir)!r} "
                                      "exists); choose another name.")
                flat["output_dir"] = str(run_dir)
                config = form.build_config(flat)
                # the dataset, the model's tokenizer, its layer names and the first rows, checked
                # before writing
                preview(config, cache=page.tokenizers)
                check_model_settings(config, cache=page.tokenizers)
                pid = page.jobs.start(config, run_dir)
            except Exception as exc:  # noqa: BLE001
                return (error_markdown(error_text(exc)), gr.skip(), gr.skip(), gr.skip())
            note = (f"Started run **{name}** (process {pid}): `python -m finetuning_suite train "
                    f"--config {run_dir / 'job.yaml'}`; its log is `{run_dir / LOG_FILE}`.")
            infos = page.runs()
            return (note, gr.Tabs(selected="watch"),
                    gr.Dropdown(choices=[i.name for i in infos], value=name), None)

        def estimate(yaml_text, *values):
            try:
                config = form.build_config(current_flat(yaml_text, values))
                return f"```text\n{dry_run_text(config)}\n```", ""
            except Exception as exc:  # noqa: BLE001
                return "", error_markdown(error_text(exc))

        start_button.click(start, [advanced, run_name, *knob_list], [message, tabs, watch_run, run_name])
        estimate_button.click(estimate, [advanced, *knob_list], [estimate_box, message])
        for name in knob_names:
            widget = knobs[name]
            events = [widget.input] if not isinstance(widget, gr.Textbox) else [widget.blur, widget.submit]
            for event in events:
                event(knobs_to_yaml, [advanced, *knob_list], [advanced, message],
                      trigger_mode="always_last", show_progress="hidden")
        for widget in (knobs["dataset_name"], knobs["model_id"]):
            widget.submit(show_preview, [advanced, *knob_list], [preview_box, message])
        advanced.blur(yaml_to_knobs, [advanced], [*knob_list, message], show_progress="hidden")
        preview_button.click(show_preview, [advanced, *knob_list], [preview_box, message])
        upload.upload(on_upload, [upload, advanced, *knob_list],
                      [knobs["dataset_name"], advanced, preview_box, message])

        # -- Watch handlers ---------------------------------------------------------------------
        def watch(name, sig):
            if not name:
                return gr.skip(), gr.skip(), gr.skip(), sig
            try:
                path = page.run_dir(name)
                info = read_run(path, alive=page.jobs.alive(path))
                chart = watch_chart(path, name)
                tail = log_tail(path)
            except Exception as exc:  # noqa: BLE001
                return error_markdown(error_text(exc)), gr.skip(), gr.skip(), sig
            status = status_markdown(info)
            new_sig = (name, hash(status), hash(chart), hash(tail))
            if new_sig == sig:
                return gr.skip(), gr.skip(), gr.skip(), sig
            changed = lambda i, value: value if sig is None or sig[i] != new_sig[i] else gr.skip()  # noqa: E731
            return changed(1, status), changed(2, chart), changed(3, tail), new_sig

        timer.tick(watch, [watch_run, watch_sig], [watch_status, watch_plot, watch_log, watch_sig],
                   show_progress="hidden")
        watch_run.change(lambda name: watch(name, None), [watch_run],
                         [watch_status, watch_plot, watch_log, watch_sig], show_progress="hidden")

        def stop(name):
            try:
                return page.jobs.stop(page.run_dir(name))
            except Exception as exc:  # noqa: BLE001
                return error_markdown(error_text(exc))

        def resume(name):
            try:
                path = page.run_dir(name)
                info = read_run(path, alive=page.jobs.alive(path))
                if info.status == "finished":
                    raise ConfigError(f"run {name!r} finished all its steps: nothing to resume. "
                                      "To train more, start a new run (e.g. with this run as model_id).")
                if not info.alive and not info.checkpoints:
                    raise ConfigError(f"run {name!r} has no checkpoint to resume from (it stopped "
                                      "before its first save); start it again as a new run.")
                pid = page.jobs.resume(path)
                page.models.forget(str(path))
                return f"Resumed **{name}** from its latest checkpoint (process {pid})."
            except Exception as exc:  # noqa: BLE001
                return error_markdown(error_text(exc))

        stop_button.click(stop, [watch_run], [message])
        resume_button.click(resume, [watch_run], [message])

        # -- Runs handlers ----------------------------------------------------------------------
        def refresh_lists(a=None, b=None, watched=None, chat_a_value=None, chat_b_value=None,
                          exported=None):
            infos = page.runs()
            names = [i.name for i in infos]
            complete = [i.name for i in infos if i.complete]
            choices = page.model_choices(infos)
            values = [v for _, v in choices]
            keep = lambda v, pool, default: v if v in pool else default  # noqa: E731
            latest_done = f"run:{complete[0]}" if complete else None
            return (runs_frame(infos),
                    gr.Dropdown(choices=names, value=keep(a, names, names[1] if len(names) > 1 else None)),
                    gr.Dropdown(choices=names, value=keep(b, names, names[0] if names else None)),
                    gr.Dropdown(choices=names, value=keep(watched, names, names[0] if names else None)),
                    gr.Dropdown(choices=choices, value=keep(chat_a_value, values, values[0])),
                    gr.Dropdown(choices=choices, value=keep(chat_b_value, values, latest_done or values[0])),
                    gr.Dropdown(choices=complete, value=keep(exported, complete, complete[0] if complete else None)))

        list_outputs = [runs_table, run_a, run_b, watch_run, chat_model_a, chat_model_b, export_run]
        list_inputs = [run_a, run_b, watch_run, chat_model_a, chat_model_b, export_run]
        app.load(refresh_lists, list_inputs, list_outputs)
        for trigger in (refresh_button.click, runs_tab.select, chat_tab.select, export_tab.select):
            trigger(refresh_lists, list_inputs, list_outputs, show_progress="hidden")

        def compare(a, b):
            try:
                ia, ib = (read_run(page.run_dir(n), alive=page.jobs.alive(page.run_dir(n))) for n in (a, b))
            except Exception as exc:  # noqa: BLE001
                return gr.skip(), gr.skip(), gr.skip(), error_markdown(error_text(exc))
            chart = line_chart({**loss_series(ia.path, ia.name), **loss_series(ib.path, ib.name)},
                               title=f"Loss: {ia.name} and {ib.name}", empty="Neither run logged a loss.")
            note = "" if ia.after or ib.after else (
                "No before/after evaluation recorded for these runs: train with `eval_before` "
                "(and an eval split: `eval_fraction` or a validation file) to compare them.")
            return chart, compare_metrics(ia, ib), compare_samples(ia, ib), note

        compare_button.click(compare, [run_a, run_b],
                             [compare_plot, compare_table, compare_sample_table, message])

        # -- Chat handlers ----------------------------------------------------------------------
        def send(text, hist, key_a, key_b, max_new):
            text = (text or "").strip()
            if not text:
                yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), "Type a message first."
                return
            hist = {side: list(hist.get(side) or []) for side in ("a", "b")}
            for side in hist:
                hist[side].append({"role": "user", "content": text})
            shown = {side: hist[side] + [{"role": "assistant", "content": "…"}] for side in hist}
            yield shown["a"], shown["b"], "", hist, ""
            held, streams = [], {}
            try:
                if max_new is None or int(max_new) < 1:
                    raise ConfigError(f"max_length={max_new!r}: must be the most new tokens to "
                                      "generate, a positive integer, e.g. 256.")
                keys = {"a": key_a, "b": key_b}
                pair = dict(zip(keys, page.models.chat_pair(*(page.model_id(k) for k in keys.values()))))
                # two sides on one loaded base (one lock) answer one after the other: the model
                # is one side's at a time; two loaded models answer side by side
                shared = pair["a"].lock is pair["b"].lock
                answers = {"a": "", "b": ""}
                for lock in sorted({id(p.lock): p.lock for p in pair.values()}.values(), key=id):
                    lock.acquire()
                    held.append(lock)
                for side in ("a", "b"):
                    if side == "b" and keys["b"] == keys["a"]:
                        continue
                    streams[side] = _side_stream(pair[side], hist[side], int(max_new))
                while streams:
                    for side in list(streams)[:1 if shared else None]:
                        try:
                            piece = next(streams[side])
                        except StopIteration:
                            del streams[side]
                            continue
                        answers[side] += piece
                        if keys["b"] == keys["a"]:
                            answers["b"] = answers["a"]
                        for s in ("a", "b"):
                            shown[s] = hist[s] + [{"role": "assistant", "content": answers[s] or "…"}]
                        yield shown["a"], shown["b"], gr.skip(), gr.skip(), gr.skip()
                for side in ("a", "b"):
                    hist[side].append({"role": "assistant", "content": answers[side].strip()})
                yield hist["a"], hist["b"], gr.skip(), hist, ""
            except Exception as exc:  # noqa: BLE001
                for side in ("a", "b"):
                    hist[side].pop()  # the question goes unanswered: leave it out of the history
                yield hist["a"], hist["b"], text, hist, error_markdown(error_text(exc))
            finally:
                for stream in streams.values():
                    stream.close()  # stops generation after the current token
                for lock in held:
                    lock.release()

        chat_inputs = [chat_input, history, chat_model_a, chat_model_b, chat_max]
        chat_outputs = [chat_a, chat_b, chat_input, history, message]
        send_button.click(send, chat_inputs, chat_outputs)
        chat_input.submit(send, chat_inputs, chat_outputs)

        def clear():
            return [], [], {"a": [], "b": []}

        clear_button.click(clear, None, [chat_a, chat_b, history])
        for dropdown in (chat_model_a, chat_model_b):
            dropdown.input(clear, None, [chat_a, chat_b, history])

        # -- Export handlers --------------------------------------------------------------------
        def export(name, kind, folder, overwrite):
            try:
                path = page.run_dir(name)
                merged, gguf = EXPORT_KINDS[kind]
                slug = re.sub(r"[^a-z0-9]+", "-", kind.split(" (")[0].lower()).strip("-")
                target = Path(folder.strip()) if folder and folder.strip() else \
                    page.workspace / "exports" / f"{name}-{slug}"
                item = page.models.get(str(path))
                with item.lock:
                    written = item.model.export(target, merged=merged, gguf=gguf, overwrite=bool(overwrite))
            except Exception as exc:  # noqa: BLE001
                return gr.skip(), error_markdown(error_text(exc))
            table = pd.DataFrame([{"file": k, "path": v} for k, v in written.items()],
                                 columns=["file", "path"])
            return table, f"Exported **{name}** ({kind}) to `{written.get('folder', target)}`."

        export_button.click(export, [export_run, export_kind, export_dir, export_overwrite],
                            [export_result, message])
    app.page = page  # for tests and the CLI
    return app


def _side_stream(side, history: list[dict], max_new: int):
    """The pieces of one chat side's answer, generated with its model active."""
    m = side.model
    prompt = m.chat_format.conversation_prompt(history)
    with side.active():
        yield from m.inference_handler.stream(prompt, m.model, m.tokenizer, m.device, max_new)


def theme():
    """gradio's Soft theme with fonts served by gradio itself (no request leaves the machine)."""
    return gr.themes.Soft()


def launch(app: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, password: str | None = None,
           block: bool = True, quiet: bool = False):
    """Serve `app`; with `password`, the page asks for it (any user name)."""
    import hmac

    def check(user: str, given: str) -> bool:
        return hmac.compare_digest(given.encode("utf-8"), password.encode("utf-8"))

    auth = check if password else None
    app.queue(default_concurrency_limit=4)
    return app.launch(server_name=host, server_port=port, auth=auth, prevent_thread_lock=not block,
                      quiet=quiet, show_error=False, theme=theme(), css=CSS, inbrowser=False,
                      share=False, footer_links=[], max_file_size="1gb")
