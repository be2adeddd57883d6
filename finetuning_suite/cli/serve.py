"""`finetune serve`: the OpenAI-compatible HTTP server (`finetuning_suite.serve`) under uvicorn.

    finetune serve                                   # the embedded model on 127.0.0.1:8000
    finetune serve --model_id runs/facts --api_key secret --port 8080
    FINETUNE_API_KEY=secret finetune serve --model_id merged/

`--model_id` is anything `FineTuner` loads: a base model, a run folder with an adapter, a merged
folder. fastapi and uvicorn are the optional `serve` extra; without them the command says how to
install them.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..serve.limits import DEFAULTS
from .hosts import is_loopback

EMBEDDED_NAME = "smollm2-135m-instruct"


@dataclass
class ServeCliArguments:
    """Options of `finetune serve`."""

    host: str = field(default="127.0.0.1", metadata={"help": "Address to listen on. The default "
                      "answers this machine only; 0.0.0.0 opens the server to the network (set "
                      "--api_key then)."})
    port: int = field(default=8000, metadata={"help": "Port to listen on."})
    api_key: str | None = field(default=None, metadata={"help": "Require 'Authorization: Bearer "
                                "<key>' on every request. Empty: the FINETUNE_API_KEY environment "
                                "variable, else no key."})
    model_name: str | None = field(default=None, metadata={"help": "The model name clients send "
                                   "(and GET /v1/models lists). Empty: the model folder's name, "
                                   f"or {EMBEDDED_NAME} for the embedded model."})
    max_tokens_limit: int = field(default=DEFAULTS.max_tokens_limit, metadata={"help": "The most new tokens one request "
                                  "may ask for (max_tokens); larger requests get 400."})
    max_batch_size: int = field(default=DEFAULTS.max_batch_size, metadata={"help": "The most requests answered together "
                                "by one batched generation."})


def default_model_name(model_id: str | None, adapter_path: str | None = None) -> str:
    """The run folder's name (or the adapter's, the .gguf file's stem, the hub id)."""
    if model_id is None:
        return Path(adapter_path).resolve().name if adapter_path else EMBEDDED_NAME
    path = Path(model_id).expanduser()
    if path.is_file():
        return path.stem
    if path.exists():
        return path.resolve().name
    return str(model_id)


def check_options(options: dict) -> None:
    problems = []
    port = options["port"]
    if not (isinstance(port, int) and 0 <= port <= 65535):
        problems.append(f"--port {port}: must be 0-65535")
    for name in ("max_tokens_limit", "max_batch_size"):
        if not (isinstance(options[name], int) and options[name] > 0):
            problems.append(f"--{name} {options[name]}: must be a positive integer")
    if options["model_name"] is not None and not options["model_name"].strip():
        problems.append("--model_name: must not be empty")
    if problems:
        raise ConfigError("finetune serve: " + "; ".join(problems) + ".")


def cmd_serve(config, options: dict) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        print("error: finetune serve needs fastapi and uvicorn: pip install 'finetuning_suite[serve]'",
              file=sys.stderr)
        return 2
    check_options(options)
    from ..finetuner import FineTuner
    from ..serve.app import API_KEY_ENV, create_app

    api_key = options["api_key"] or os.environ.get(API_KEY_ENV) or None
    name = options["model_name"] or default_model_name(config.model.model_id, config.model.adapter_path)
    host, port = options["host"], options["port"]
    ft = FineTuner.from_config(config)
    app = create_app(ft, model_name=name, api_key=api_key, max_tokens_limit=options["max_tokens_limit"],
                     max_batch_size=options["max_batch_size"])
    if not is_loopback(host) and not api_key:
        print(f"warning: listening on {host} without an API key: anyone who can reach this port can "
              "use the model (set --api_key or FINETUNE_API_KEY).", file=sys.stderr)
    shown = f"[{host}]" if ":" in host else host
    print(f"Serving {name!r} at http://{shown}:{port}/v1 ({'API key required' if api_key else 'no API key'}); "
          "Ctrl+C stops.", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info")
    return 0
