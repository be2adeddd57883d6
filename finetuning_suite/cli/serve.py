"""`finetune serve`: the OpenAI-compatible HTTP server (`finetuning_suite.serve`) under uvicorn.

    finetune serve                                   # the embedded model on 127.0.0.1:8000
    finetune serve --model_id runs/facts --api_key secret --port 8080
    FINETUNE_API_KEY=secret finetune serve --model_id merged/
    finetune serve --model_id facts=runs/facts --model_id style=runs/style   # one base, two adapters

One `--model_id` is anything `FineTuner` loads: a base model, a run folder with an adapter, a
merged folder. Several are runs with adapters on one base (`AdapterSet`): the base is loaded
once, each run's adapter on it; requests pick one by name (`name=path`, or the run folder's
name), and the base answers too, under its own name (its folder's, or give the base itself as
`--model_id name=path`). fastapi and uvicorn are the optional `serve` extra; without them the
command says how to install them.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from typing import ClassVar
from pathlib import Path

from ..adapter_set import EMBEDDED_NAME, default_name
from ..errors import ConfigError
from ..serve.limits import DEFAULTS
from .hosts import is_loopback

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")  # a name=path prefix (a path has a '/' or is a file)


@dataclass
class ServeCliArguments:
    """Options of `finetune serve`."""

    # configuration flags given more than once, with what --help adds to their help
    repeatable: ClassVar[dict[str, str]] = {"model_id": (
        "Give it more than once to serve several runs' LoRA adapters on one base, loaded once "
        "(e.g. --model_id facts=runs/facts --model_id style=runs/style): requests pick a run by "
        "name (name=path, or the run folder's name), and the base answers too (under its folder's "
        "name, or give the base itself as --model_id NAME=path).")}

    host: str = field(default="127.0.0.1", metadata={"help": "Address to listen on. The default "
                      "answers this machine only; 0.0.0.0 opens the server to the network (set "
                      "--api_key then)."})
    port: int = field(default=8000, metadata={"help": "Port to listen on."})
    api_key: str | None = field(default=None, metadata={"help": "Require 'Authorization: Bearer "
                                "<key>' on every request. Empty: the FINETUNE_API_KEY environment "
                                "variable, else no key."})
    model_name: str | None = field(default=None, metadata={"help": "The model name clients send "
                                   "(and GET /v1/models lists). Empty: the model folder's name, "
                                   f"or {EMBEDDED_NAME} for the embedded model. With several "
                                   "--model_id, name each as --model_id name=path instead."})
    max_tokens_limit: int = field(default=DEFAULTS.max_tokens_limit, metadata={"help": "The most new tokens one request "
                                  "may ask for (max_tokens); larger requests get 400."})
    max_batch_size: int = field(default=DEFAULTS.max_batch_size, metadata={"help": "The most requests answered together "
                                "by one batched generation."})


def served_models(values: list) -> list[tuple[str | None, str | None]]:
    """(name or None, model_id) for each `--model_id` value: `name=path` gives the name, unless
    the whole value is an existing path (a folder may have a '=' in its name)."""
    out = []
    for value in values:
        if value is None or Path(value).expanduser().exists():
            out.append((None, value))
            continue
        name, eq, rest = value.partition("=")
        if eq and NAME.match(name) and rest:
            out.append((name, rest))
        elif eq and not rest:
            raise ConfigError(f"--model_id {value!r}: nothing after '='; give name=path, e.g. "
                              "--model_id facts=runs/facts.")
        else:
            out.append((None, value))
    return out


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
    host, port = options["host"], options["port"]
    limits = dict(api_key=api_key, max_tokens_limit=options["max_tokens_limit"],
                  max_batch_size=options["max_batch_size"])
    entries = served_models(options.get("model_ids") or [])
    if len(entries) > 1:
        app = create_app(_adapter_set(config, entries, options), **limits)
    else:
        given, model_id = config.given_flat(), config.model.model_id
        name = options["model_name"]
        if entries:
            (named, model_id), = entries
            given["model_id"] = model_id
            if named and name:
                raise ConfigError(f"finetune serve: the model is named twice (--model_id "
                                  f"{named}=... and --model_name {name}); give one.")
            name = name or named
        name = name or default_name(model_id, config.model.adapter_path)
        app = create_app(FineTuner(**given), model_name=name, **limits)
    names = ", ".join(repr(n) for n in app.state.model_names)
    if not is_loopback(host) and not api_key:
        print(f"warning: listening on {host} without an API key: anyone who can reach this port can "
              "use the model (set --api_key or FINETUNE_API_KEY).", file=sys.stderr)
    shown = f"[{host}]" if ":" in host else host
    print(f"Serving {names} at http://{shown}:{port}/v1 ({'API key required' if api_key else 'no API key'}); "
          "Ctrl+C stops.", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info")
    return 0


def _adapter_set(config, entries: list, options: dict):
    """The runs of several `--model_id`s on one loaded base, each named by its `name=` or its
    folder's name; every other option given applies to each run."""
    from ..adapter_set import AdapterSet

    if options["model_name"]:
        raise ConfigError(f"finetune serve: --model_name {options['model_name']} names the one model "
                          "served; with several --model_id, name each as name=path (the base too: "
                          "--model_id NAME=<base model>).")
    if config.model.adapter_path:
        raise ConfigError("finetune serve: --adapter_path puts one adapter on one model; with "
                          "several --model_id, give each run folder as a --model_id.")
    given = {k: v for k, v in config.given_flat().items() if k != "model_id"}
    return AdapterSet([(name or default_name(model_id), model_id) for name, model_id in entries],
                      **given)
