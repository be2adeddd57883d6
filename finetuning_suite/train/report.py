"""The run report: what a training run leaves in its output folder for a person to read.

`write_report(output_dir, run_record, eval_before, eval_after)` reads `metrics.jsonl` (written
during training by `meter.RunReportCallback`), draws `loss_curve.png` (train and eval loss) and
writes `report.html`, one self-contained page: headline numbers, before/after evaluation with
sample generations side by side, the loss curve, the resolved config and library versions.
"""
from __future__ import annotations

import base64
import html
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from .meter import METRICS_FILE, read_metrics

LOSS_CURVE_FILE = "loss_curve.png"
REPORT_FILE = "report.html"


# -- the report ---------------------------------------------------------------------------------
def write_report(output_dir: str | os.PathLike, run_record: dict, eval_before: dict | None = None,
                 eval_after: dict | None = None) -> dict[str, Path]:
    """Draw `loss_curve.png` from `metrics.jsonl` and write `report.html` in `output_dir`.

    `run_record` is what the run knows about itself; read, all optional: "model" (a name, or a
    dict with "source"/"model_id"/"name"), "method" (else inferred from "lora"/"quantization"),
    "dataset" (or "data": {"dataset"}), "wall_seconds", "config" (a dict shown as YAML, or a
    string shown as is), "versions" (a dict); without "config" the rest of the record is shown.
    `eval_before` / `eval_after`: numeric metrics shown side by side with deltas, and optional
    "samples": [{"prompt", "reference", "generated"}] shown side by side (paired by prompt).
    Both files are written atomically. Returns {"metrics", "loss_curve", "report"} paths
    ("metrics" only when the file exists).
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_record = dict(run_record or {})
    records = read_metrics(out / METRICS_FILE)
    png_path = out / LOSS_CURVE_FILE
    png = _loss_curve_png(records, title=f"Loss: {_model_name(run_record)}")
    _write_atomic(png_path, png)
    page = _render_html(run_record, records, eval_before, eval_after, png)
    report_path = out / REPORT_FILE
    _write_atomic(report_path, page.encode("utf-8"))
    paths = {"loss_curve": png_path, "report": report_path}
    if (out / METRICS_FILE).exists():
        paths["metrics"] = out / METRICS_FILE
    return paths


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _loss_curve_png(records: list[dict], title: str) -> bytes:
    import io

    from matplotlib.figure import Figure  # the object API: no pyplot state, no backend switch

    train = [(r["step"], r["loss"]) for r in records
             if r.get("event") == "train" and _num(r.get("loss")) is not None and r.get("step") is not None]
    evals = [(r["step"], r["eval_loss"]) for r in records
             if _num(r.get("eval_loss")) is not None and r.get("step") is not None]
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train), marker="o" if len(train) < 30 else None, markersize=3,
                label="train loss")
    if evals:
        ax.plot(*zip(*evals), marker="s", linestyle="--", label="eval loss")
    if not train and not evals:
        ax.text(0.5, 0.5, "no loss was logged", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend()
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title.replace("$", r"\$"))  # no mathtext from user text
    ax.grid(True, alpha=0.3)
    rewards = _reward_points(records)
    if rewards:  # preference and reward stages: their rewards on a second axis
        twin = ax.twinx()
        for name, points in rewards.items():
            twin.plot(*zip(*points), linestyle=":", marker=".", label=name)
        twin.set_ylabel("reward")
        twin.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _reward_points(records: list[dict]) -> dict[str, list[tuple]]:
    """Per-step rewards a stage logged (GRPO: `reward`, `rewards/<function>/mean`; DPO and the
    others: `rewards/margins`), for the curve."""
    points: dict[str, list[tuple]] = {}
    for r in records:
        if r.get("event") != "train" or r.get("step") is None:
            continue
        for key, value in r.items():
            if _num(value) is not None and (key == "reward" or key == "rewards/margins"
                                            or (key.startswith("rewards/") and key.endswith("/mean"))):
                points.setdefault(key, []).append((r["step"], value))
    return points


def _reward_table(records: list[dict]) -> list[tuple[str, float, float]]:
    """(reward function, mean over training, spread = the mean of its logged std) per function."""
    out = []
    for key in sorted({k for r in records for k in r if k.startswith("rewards/") and k.endswith("/mean")}):
        means = [r[key] for r in records if _num(r.get(key)) is not None]
        stds = [r[key[:-5] + "/std"] for r in records if _num(r.get(key[:-5] + "/std")) is not None]
        if means:
            out.append((key[len("rewards/"):-len("/mean")], sum(means) / len(means),
                        sum(stds) / len(stds) if stds else float("nan")))
    return out


_LOWER_IS_BETTER = ("loss", "perplexity", "ppl", "runtime", "error", "wer", "cer")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;
padding:0 1em;color:#222}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ddd;padding:4px 8px;
text-align:left;vertical-align:top} th{background:#f4f4f4}
table.kv th{width:14em} td.num{text-align:right;font-variant-numeric:tabular-nums}
.better{color:#137333;font-weight:600} .worse{color:#b3261e;font-weight:600}
td.text{white-space:pre-wrap;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em;max-width:30em}
pre{background:#f7f7f7;padding:1em;overflow-x:auto;font-size:.85em} .muted{color:#777}
img{max-width:100%;border:1px solid #eee}
"""


def _render_html(run_record: dict, records: list[dict], before: dict | None, after: dict | None,
                 png: bytes) -> str:
    e = _esc
    model = _model_name(run_record)
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>Fine-tuning report: {e(model)}</title>", f"<style>{_CSS}</style></head><body>",
             f"<h1>Fine-tuning report: {e(model)}</h1>"]
    created = run_record.get("created")
    if created:
        parts.append(f'<p class="muted">{e(created)}</p>')

    parts.append('<table class="kv">')
    for label, value in _headline(run_record, records):
        parts.append(f"<tr><th>{e(label)}</th><td>{e(value)}</td></tr>")
    parts.append("</table>")

    metric_rows = _metric_rows(before, after)
    if metric_rows:
        parts.append("<h2>Evaluation: before and after training</h2>")
        parts.append("<table><tr><th>metric</th><th>before</th><th>after</th><th>change</th></tr>")
        for name, b, a in metric_rows:
            delta, css = "", ""
            if b is not None and a is not None:
                diff = a - b
                delta = f"{diff:+.4g}"
                if diff:
                    lower_better = any(w in name.lower() for w in _LOWER_IS_BETTER)
                    css = "better" if (diff < 0) == lower_better else "worse"
            parts.append(f"<tr><td>{e(name)}</td><td class=num>{e(_fmt(b))}</td>"
                         f"<td class=num>{e(_fmt(a))}</td><td class='num {css}'>{e(delta)}</td></tr>")
        parts.append("</table>")

    shrunk = (run_record.get("metrics") or {}).get("adapter_shrink")
    if isinstance(shrunk, dict) and shrunk.get("line"):
        parts.append("<h2>Adapter scale</h2>")
        parts.append(f"<p>{e(shrunk['line'])} Scales tried, with the learned training answers "
                     f"still given: {e(', '.join(f'{k}: {v}' for k, v in (shrunk.get('tried') or {}).items()))}.</p>")
    kept = (run_record.get("metrics") or {}).get("retention")
    if isinstance(kept, dict):
        parts.append("<h2>Did it forget? General prompts asked before and after</h2>")
        css = "worse" if kept.get("warning") else "better"
        parts.append(f"<p class='{css}'>{e(kept.get('line', ''))} (of {e(kept.get('asked'))} "
                     "general prompts with checkable answers: the ones the model answered right "
                     "before training are the denominator).</p>")
        if kept.get("warning"):
            parts.append(f"<p class='worse'>{e(kept['warning'])}</p>")
        if kept.get("lost"):
            parts.append("<table><tr><th>lost prompt</th><th>before</th><th>after</th></tr>")
            for item in kept["lost"]:
                parts.append(f"<tr><td class=text>{e(item.get('prompt'))}</td><td class=text>"
                             f"{e(item.get('before'))}</td><td class=text>{e(item.get('after'))}</td></tr>")
            parts.append("</table>")

    reward_rows = _reward_table(records)
    if reward_rows:
        parts.append("<h2>Rewards during training</h2><table><tr><th>reward function</th>"
                     "<th>mean</th><th>spread (mean std within groups)</th></tr>")
        for name, mean, spread in reward_rows:
            parts.append(f"<tr><td>{e(name)}</td><td class=num>{mean:.4g}</td><td class=num>{spread:.4g}</td></tr>")
        parts.append("</table>")

    parts.append("<h2>Loss curve</h2>")
    parts.append(f'<img alt="train and eval loss by step" '
                 f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">')

    samples = _sample_rows(before, after)
    if samples:
        parts.append("<h2>Sample generations</h2>")
        parts.append("<table><tr><th>#</th><th>prompt</th><th>reference</th><th>before</th>"
                     "<th>after</th></tr>")
        for i, (prompt, ref, b, a) in enumerate(samples, 1):
            parts.append(f"<tr><td class=num>{i}</td><td class=text>{e(prompt)}</td>"
                         f"<td class=text>{e(ref)}</td><td class=text>{e(b)}</td>"
                         f"<td class=text>{e(a)}</td></tr>")
        parts.append("</table>")

    if "config" in run_record:
        parts.append("<h2>Resolved configuration</h2>")
        parts.append(f"<pre>{e(_as_yaml(run_record['config']))}</pre>")
    else:
        rest = {k: v for k, v in run_record.items() if k not in ("versions",)}
        if rest:
            parts.append("<h2>Run record</h2>")
            parts.append(f"<pre>{e(_as_yaml(rest))}</pre>")

    versions = run_record.get("versions")
    if isinstance(versions, dict) and versions:
        parts.append("<h2>Library versions</h2><table>")
        for name, version in versions.items():
            shown = version if version is not None else "not installed"
            parts.append(f"<tr><th>{e(name)}</th><td>{e(shown)}</td></tr>")
        parts.append("</table>")

    final = next((r for r in reversed(records) if r.get("event") == "summary"), None)
    if final:
        parts.append("<h2>Trainer summary</h2>")
        parts.append(f"<pre>{e(json.dumps(final, indent=2))}</pre>")
    parts.append(f'<p class="muted">metrics.jsonl: {len(records)} lines. '
                 "Written by finetuning_suite.</p></body></html>")
    return "\n".join(parts)


def _headline(run_record: dict, records: list[dict]) -> list[tuple[str, str]]:
    rows = [("Model", _model_name(run_record)), ("Method", _method(run_record)),
            ("Dataset", _dataset(run_record))]
    train = [r for r in records if r.get("event") == "train"]
    summary = next((r for r in reversed(records) if r.get("event") == "summary"), None)
    wall = _num(run_record.get("wall_seconds"))
    if wall is None and summary is not None:
        wall = _num(summary.get("train_runtime"))
    if wall is None and records:
        wall = _num(records[-1].get("elapsed_s"))
    rows.append(("Wall time", _duration(wall)))
    steps = max((r.get("step") or 0 for r in records), default=0)
    epoch = max((_num(r.get("epoch")) or 0 for r in records), default=0)
    rows.append(("Steps / epochs", f"{steps} steps, {epoch:.3g} epochs" if records else "—"))
    losses = [_num(r.get("loss")) for r in train if _num(r.get("loss")) is not None]
    if losses:
        loss_text = (f"{losses[0]:.4g} → {losses[-1]:.4g} ({losses[-1] - losses[0]:+.4g})"
                     if len(losses) > 1 else f"{losses[0]:.4g} (one logged value)")
    else:
        loss_text = "—"
    rows.append(("Train loss first → last", loss_text))
    eval_losses = [_num(r.get("eval_loss")) for r in records
                   if r.get("event") == "eval" and _num(r.get("eval_loss")) is not None]
    if eval_losses:
        rows.append(("Eval loss during training", " → ".join(f"{x:.4g}" for x in eval_losses)
                     if len(eval_losses) <= 6 else
                     f"{eval_losses[0]:.4g} → … → {eval_losses[-1]:.4g} ({len(eval_losses)} evals)"))
    meter = summary if summary is not None and _num(summary.get("tokens_per_s_avg")) else (
        train[-1] if train else None)
    start = next((r for r in records if r.get("event") == "start"), {})
    tps = _num(meter.get("tokens_per_s_avg")) if meter else None
    counted = start.get("tokens_counted")
    if tps is not None:
        kind = {"non_padding": "real tokens", "all": "tokens incl. padding"}.get(counted, "tokens")
        tokens = meter.get("num_input_tokens_seen")
        rows.append(("Throughput", f"{tps:,.1f} {kind}/s" + (f" ({tokens:,} tokens)" if tokens else "")
                     + ", evaluation and checkpoint time left out"))
    else:
        rows.append(("Throughput", "not measured (include_num_input_tokens_seen was off)"
                     if counted == "no" else "—"))
    mfu = _num(meter.get("mfu_avg")) if meter else None
    if mfu is not None:
        peak = _num(start.get("peak_flops"))
        fpt = _num(start.get("flops_per_token"))
        detail = []
        if fpt:
            detail.append(f"{fpt / 1e6:,.1f} MFLOP/token")
        if peak:
            detail.append(f"of a measured peak of {_flops(peak)}")
        rows.append(("MFU", f"{mfu:.1%}" + (f" ({', '.join(detail)})" if detail else "")))
    else:
        rows.append(("MFU", "— (needs flops_per_token and peak_flops)"))
    return rows


def _model_name(rec: dict) -> str:
    value = _lookup(rec, ("model",), ("model_name",), ("model_id",), ("config", "model", "model_id"),
                    ("config", "model_id"))
    if isinstance(value, dict):
        value = _lookup(value, ("name",), ("model_id",), ("source",))
    return str(value) if value not in (None, "") else "unnamed model"


def _method(rec: dict) -> str:
    method = _lookup(rec, ("method",), ("config", "method"))
    if isinstance(method, str) and method:
        return method
    lora = _lookup(rec, ("lora",), ("config", "lora"))
    quant = _lookup(rec, ("model", "quantization"), ("quantization",), ("config", "model", "quantization"))
    if isinstance(lora, dict):
        targets = lora.get("target_modules")
        if isinstance(targets, (list, tuple, set)):
            targets = ", ".join(sorted(map(str, targets)))
        desc = ", ".join(f"{k}={v}" for k, v in (("r", lora.get("r")), ("alpha", lora.get("lora_alpha")),
                                                 ("targets", targets)) if v is not None)
        name = "LoRA"
        if quant:
            bits = "4-bit" if (isinstance(quant, dict) and quant.get("load_in_4bit")) or quant is True else (
                "8-bit" if isinstance(quant, dict) and quant.get("load_in_8bit") else "quantized")
            name = f"QLoRA ({bits} base)"
        return f"{name}: {desc}" if desc else name
    return "—"


def _dataset(rec: dict) -> str:
    value = _lookup(rec, ("dataset",), ("dataset_name",), ("data", "dataset"), ("data", "dataset_name"),
                    ("config", "data", "dataset_name"), ("config", "dataset_name"))
    return str(value) if value not in (None, "") else "—"


def _lookup(rec: dict, *paths: tuple[str, ...]):
    for path in paths:
        value: Any = rec
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value not in (None, ""):
            return value
    return None


def _metric_rows(before: dict | None, after: dict | None) -> list[tuple[str, float | None, float | None]]:
    names: list[str] = []
    for d in (before or {}, after or {}):
        for k, v in d.items():
            if k != "samples" and _num(v) is not None and k not in names:
                names.append(k)
    return [(k, _num((before or {}).get(k)), _num((after or {}).get(k))) for k in names]


def _sample_rows(before: dict | None, after: dict | None) -> list[tuple[str, str, str, str]]:
    b_samples = [s for s in (before or {}).get("samples") or [] if isinstance(s, dict)]
    a_samples = [s for s in (after or {}).get("samples") or [] if isinstance(s, dict)]
    if not b_samples and not a_samples:
        return []
    rows: dict[str, list] = {}
    for side, samples in ((2, b_samples), (3, a_samples)):
        for i, s in enumerate(samples):
            prompt = str(s.get("prompt", ""))
            key = prompt if prompt else f"#{i}"
            row = rows.setdefault(key, [prompt, "", "", ""])
            reference = s.get("reference", s.get("expected"))
            if reference is not None and not row[1]:
                row[1] = str(reference)
            row[side] = str(s.get("generated", s.get("output", "")))
    return [tuple(r) for r in rows.values()]


def _as_yaml(value) -> str:
    if isinstance(value, str):
        return value
    import yaml

    plain = json.loads(json.dumps(value, default=str))  # dtypes, paths, enums -> strings
    return yaml.safe_dump(plain, sort_keys=False, default_flow_style=False, allow_unicode=True)


def _num(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def _flops(value: float) -> str:
    for unit, scale in (("PFLOP/s", 1e15), ("TFLOP/s", 1e12), ("GFLOP/s", 1e9)):
        if value >= scale:
            return f"{value / scale:,.1f} {unit}"
    return f"{value:,.0f} FLOP/s"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min {sec:02d} s" if hours else f"{minutes} min {sec:02d} s"


def _esc(value) -> str:
    return html.escape(str(value), quote=True)
