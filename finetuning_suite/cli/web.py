"""`finetune web`: the page to fine-tune, watch, compare, chat and export (`finetuning_suite.web`).

    finetune web                                     # http://127.0.0.1:7860, runs in ./runs
    finetune web --workspace experiments --port 8080
    finetune web --model_id models/base --dataset_name data.jsonl --lora_r 8   # the form's values
    finetune web --host 0.0.0.0 --password secret    # open to the network: a password is required

The configuration flags (and `--config x.yaml`) fill the page's form; training itself runs in
separate `python -m finetuning_suite train` processes that outlive the page. gradio is the
optional `web` extra; without it the command says how to install it.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from ..errors import ConfigError
from .hosts import is_loopback

PASSWORD_ENV = "FINETUNE_WEB_PASSWORD"


@dataclass
class WebCliArguments:
    """Options of `finetune web`."""

    host: str = field(default="127.0.0.1", metadata={"help": "Address to listen on. The default "
                      "answers this machine only; another address (0.0.0.0: every interface) "
                      "needs --password, since the page starts processes and writes files."})
    port: int = field(default=7860, metadata={"help": "Port to listen on."})
    workspace: str = field(default="runs", metadata={"help": "The folder of run folders: new runs "
                           "are written there, and every run in it is listed (created if missing)."})
    password: str | None = field(default=None, metadata={"help": "Ask for this password (any user "
                                 f"name). Empty: the {PASSWORD_ENV} environment variable, else "
                                 "none (allowed on this machine's own address only)."})


def check_options(options: dict) -> str | None:
    """Raise ConfigError on bad options; return the password to use (or None)."""
    problems = []
    port = options["port"]
    if not (isinstance(port, int) and 0 < port <= 65535):
        problems.append(f"--port {port}: must be 1-65535, e.g. 7860")
    workspace = options["workspace"]
    if not workspace or (os.path.exists(workspace) and not os.path.isdir(workspace)):
        problems.append(f"--workspace {workspace!r}: must be a folder path, e.g. runs")
    password = options.get("password") or os.environ.get(PASSWORD_ENV) or None
    host = options["host"]
    if not is_loopback(host) and not password:
        problems.append(f"--host {host}: the page would be open to the network without a password, "
                        "and it starts training processes and writes files; pass --password (or "
                        f"set {PASSWORD_ENV}), or keep the default --host 127.0.0.1")
    if problems:
        raise ConfigError("finetune web: " + "; ".join(problems) + ".")
    return password


def cmd_web(config, options: dict) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("error: finetune web needs gradio: pip install 'finetuning_suite[web]'", file=sys.stderr)
        return 2
    password = check_options(options)
    import logging

    from ..web.app import create_app, launch

    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's start-up self-checks

    app = create_app(config, options["workspace"])
    host, port = options["host"], options["port"]
    shown = f"[{host}]" if ":" in host else host
    print(f"finetune web: http://{shown}:{port}/ (workspace {app.page.workspace}"
          f"{', password required' if password else ''}); Ctrl+C stops the page (training "
          "jobs it started keep running; the page finds them again).", flush=True)
    try:
        launch(app, host=host, port=port, password=password, block=True, quiet=True)
    except KeyboardInterrupt:
        pass
    running = app.page.jobs.running()
    if running:
        names = ", ".join(p.name for p in running)
        print(f"Training still running: {names}. Stop one with `touch <run>/STOP`, or open the page "
              "again.", file=sys.stderr)
    return 0
