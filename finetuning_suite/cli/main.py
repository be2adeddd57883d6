"""The `finetune` command (also `python -m finetuning_suite`).

    finetune train --config recipes/smollm2_lora.yaml --num_train_epochs 1
    finetune train --dataset_name iso_dates --output_dir runs/iso --print_config
    finetune train --dataset_name iso_dates --dry_run      # the estimate: memory and time
    finetune eval --model_id runs/iso --limit 20
    finetune generate --model_id runs/iso --prompt "Rewrite as ISO 8601: May 1, 2020"
    finetune chat --model_id runs/iso
    finetune demo

Every option is a flag spelled as its Python name (`--lora_r`, dashed aliases work too),
generated from the dataclasses in `finetuning_suite.config` by transformers' HfArgumentParser;
any other `TrainingArguments` field is accepted as `--name value`. `--config run.yaml` gives
values, flags override them; `--print_config` prints the resolved YAML and exits.
Bad input: one message on stderr, exit status 2 (`--debug` shows the traceback); Ctrl+C: 130.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..config import (SECTIONS, FinetuneConfig, coerce_all, coerce_to, option_fields,
                      parse_yaml_mapping, scalar, suggest, training_argument_names)
from ..config.options import pass_through_field
from ..config.values import unwrap_optional
from ..errors import FineTuningError
from ..model.run_folder import checkpoints

COMMANDS = {
    "train": "fine-tune a model and write the adapter (or model), config.yaml and a report",
    "eval": "loss, perplexity and generation metrics on a dataset (its validation split, else every row)",
    "generate": "generate for one prompt (--prompt) or a file of prompts (--prompts_file)",
    "chat": "talk to a model in the terminal (keeps the conversation; /reset, /exit)",
    "export": "write a merged model folder, the adapter alone, or a GGUF file (+ Ollama Modelfile)",
    "serve": "an OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions, /v1/models)",
    "web": "a page to fine-tune, watch, compare, chat with and export models (gradio)",
    "demo": "the main job: teach the embedded model ISO dates, before/after",
}


class UsageError(Exception):
    """Bad command-line input: reported in one line, exit status 2."""


@dataclass
class CliArguments:
    """Options of the command itself."""

    config: str | None = field(default=None, metadata={"help": "A YAML file of options (flat keys, "
                               "as --print_config writes them); flags given too override it."})
    print_config: bool = field(default=False, metadata={"help": "Print the resolved configuration "
                               "as YAML and exit."})
    debug: bool = field(default=False, metadata={"help": "Show full tracebacks."})


@dataclass
class TrainCliArguments:
    """Options of `finetune train`."""

    resume: bool = field(default=False, metadata={"help": "Continue the run in output_dir from its "
                         "latest checkpoint (the same as --resume_from_checkpoint true)."})
    dry_run: bool = field(default=False, metadata={"help": "Load the model, prepare the data, print "
                          "the estimate of the run's peak memory and time, and exit: nothing is "
                          "trained, output_dir is not written."})


@dataclass
class EvalCliArguments:
    """Options of `finetune eval`."""

    limit: int | None = field(default=None, metadata={"help": "Evaluate at most this many rows."})
    max_new_tokens: int | None = field(default=None, metadata={"help": "Generation length for the "
                                       "metrics. Empty: max_length."})
    output_file: str | None = field(default=None, metadata={"help": "Also write the metrics (with "
                                    "every sample) to this JSON file."})


@dataclass
class GenerateCliArguments:
    """Options of `finetune generate`."""

    prompt: list[str] | None = field(default=None, metadata={"help": "One or more prompts."})
    prompts_file: str | None = field(default=None, metadata={"help": "A text file, one prompt a "
                                     "line, or a .jsonl file with a 'prompt' field."})


def _extra(command: str):
    """The command's own options dataclass (export and serve keep theirs beside their code)."""
    if command == "export":
        from .export import ExportCliArguments

        return ExportCliArguments
    if command == "serve":
        from .serve import ServeCliArguments

        return ServeCliArguments
    if command == "web":
        from .web import WebCliArguments

        return WebCliArguments
    return {"train": TrainCliArguments, "eval": EvalCliArguments,
            "generate": GenerateCliArguments}.get(command)


class _Parser(argparse.ArgumentParser):
    """argparse, with errors raised (one line, exit 2) instead of a usage dump."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def build_parser(command: str):
    """The parser of `finetune <command>`: flags generated from the configuration's dataclasses
    (and the command's own) by transformers' HfArgumentParser, which also writes `--help`.

    Every flag's value is read as text here, with no type or choice of argparse's own: the
    configuration turns it into the option's type (`config.coerce`) and judges it
    (`config.validate`), exactly as it does for YAML, the API and the web page, so a bad value
    gets the same message wherever it was given."""
    from transformers import HfArgumentParser

    class Parser(HfArgumentParser, _Parser):
        pass

    extra = _extra(command)
    types = [*SECTIONS.values(), CliArguments] + ([extra] if extra is not None else [])
    parser = Parser(types, prog=f"finetune {command}", description=COMMANDS[command],
                    epilog="Any other transformers.TrainingArguments field is accepted as "
                           "--name value.", allow_abbrev=False)
    # argparse reads "-2e-5" as an option (its negative-number pattern has no exponent); a value
    # like that must reach the option before it, as "-2" and "-.5" do
    parser._negative_number_matcher = re.compile(r"^-(\d+|\d*\.\d+|\d*\.?\d+[eE][-+]?\d+)$")
    repeatable = getattr(extra, "repeatable", {})
    for action in parser._actions:
        if action.dest in repeatable:
            action.help = f"{action.help} {repeatable[action.dest]}"
        if action.help:  # argparse formats help with %: a literal one must be doubled
            action.help = action.help.replace("%", "%%")
        if action.choices is not None and action.option_strings:
            action.metavar = "{" + ",".join(str(c) for c in action.choices) + "}"
            action.choices = None
        if action.type is not None:
            action.type = None
    return parser, types


def read_yaml(path: str) -> dict:
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--config {path}: no such file; pass the path of a YAML file "
                         "(see recipes/ for examples).")
    return parse_yaml_mapping(file.read_text(encoding="utf-8"), f"--config {path}",
                              "Fix the file; `finetune train --print_config` shows the expected layout.")


def _given_flags(parser, argv: list[str]) -> tuple[dict, list[str]]:
    """The flags `argv` gives (dest -> value as typed) and what is left over. Defaults are
    not filled in: an option not on the command line is not given."""
    for action in parser._actions:
        if action.dest != "help":
            action.default = argparse.SUPPRESS
    namespace, remaining = parser.parse_known_args(argv)
    return vars(namespace), remaining


def _command_options(types, given: dict, command: str) -> dict:
    """The command's own options (`CliArguments`, `TrainCliArguments`, ...), given values
    turned into their field's type, the rest at their defaults."""
    import typing

    problems, options = [], {}
    for cls in types[len(SECTIONS):]:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name not in given:
                options[f.name] = f.default
                continue
            value = coerce_to(hints[f.name], given[f.name], f.default)
            base, optional = unwrap_optional(hints[f.name])
            ok = (value is None and optional) or (
                isinstance(value, bool) if base is bool else
                isinstance(value, int) and not isinstance(value, bool) if base is int else
                isinstance(value, list) if typing.get_origin(base) is list else isinstance(value, base))
            if not ok:
                problems.append(f"--{f.name} {given[f.name]!r}: must be "
                                f"{'true or false' if base is bool else 'an integer' if base is int else 'text'}")
            options[f.name] = value
    if problems:
        raise UsageError(f"finetune {command}: " + "; ".join(problems) + ".")
    return options


def parse_command_line(command: str, argv: list[str]) -> tuple[FinetuneConfig, dict]:
    """(config, command options) from `--config` YAML and flags (flags win). The config's
    `given` names are the YAML keys and the flags on the command line."""
    parser, types = build_parser(command)
    if "-h" in argv or "--help" in argv:
        parser.parse_args(["--help"])  # prints the help (with the defaults) and exits 0
    pre = _Parser(add_help=False, prog=f"finetune {command}", allow_abbrev=False)
    pre.add_argument("--config")
    # a configuration flag the command takes more than once (its options' `repeatable`): every
    # value, in order, goes to the command's options under the plural name; the configuration
    # keeps the last, as for any flag given twice
    repeated = next(iter(getattr(_extra(command), "repeatable", {})), None)
    if repeated:
        pre.add_argument(f"--{repeated}", f"--{repeated.replace('_', '-')}", action="append",
                         dest="repeated", default=[])
    known, _ = pre.parse_known_args(argv)
    from_file = read_yaml(known.config) if known.config else {}
    flags, remaining = _given_flags(parser, argv)
    command_names = {f.name for cls in types[len(SECTIONS):] for f in dataclasses.fields(cls)}
    given = {**from_file, **flags}
    extras = _training_flags(command, remaining, set(flags) | command_names | set(option_fields()))
    flat = {k: v for k, v in given.items() if k not in command_names}
    flat.update(extras)
    where = f"--config {known.config}" if known.config else f"finetune {command}"
    config = FinetuneConfig.from_flat(coerce_all(flat), where=where)
    options = _command_options(types, {k: v for k, v in given.items() if k in command_names}, command)
    if repeated:
        options[f"{repeated}s"] = known.repeated or ([from_file[repeated]] if repeated in from_file else [])
    return config, options


def _training_flags(command: str, remaining: list[str], ours: set[str]) -> dict:
    """`--name value` pairs for TrainingArguments fields that are not our own options (values
    read as YAML reads them: `1e-8` is a number)."""
    out, i = {}, 0
    names = training_argument_names()
    while i < len(remaining):
        flag = remaining[i]
        name = flag[2:].replace("-", "_") if flag.startswith("--") else None
        value = None
        if name is not None and "=" in name:
            name, value = name.split("=", 1)
        if name is None or (name not in names and pass_through_field(name) is None):
            hint = suggest(name, names | ours) if name else ""
            raise UsageError(f"finetune {command}: unknown option {flag!r}{hint} (see "
                             f"`finetune {command} --help`).")
        if value is not None:
            i += 1
        elif i + 1 < len(remaining) and not remaining[i + 1].startswith("--"):
            value, i = remaining[i + 1], i + 2
        else:
            value, i = "true", i + 1
        out[name] = scalar(value)
    return out


# -- the commands -------------------------------------------------------------------------
def cmd_train(config: FinetuneConfig, options: dict) -> int:
    from ..finetuner import FineTuner

    ft = FineTuner.from_config(config)
    if options.get("dry_run"):
        from ..train.estimate import dry_run

        estimate = dry_run(ft)
        print(estimate.text())
        return 0
    out = config.training.output_dir
    try:
        metrics = ft.train(eval_before=config.training.eval_before,
                           resume_from_checkpoint=True if options.get("resume") else None)
    except KeyboardInterrupt:
        print(f"\n{interrupted_message(out)}", file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun / accelerate: rank 0 reports
        return 0
    shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    print(json.dumps(shown, indent=2))
    kept = metrics.get("retention")
    if kept:  # the last lines say whether the model forgot
        print(f"Retention: {kept['line']}.")
        if kept.get("warning"):
            print(f"warning: {kept['warning']}", file=sys.stderr)
    print(f"Saved to {out}/ (report: {out}/report.html). Reload with: finetune chat --model_id {out}")
    return 0


def interrupted_message(out: str) -> str:
    """What Ctrl+C during `finetune train` left: the newest checkpoint (by step number:
    checkpoint-10 after checkpoint-9) and the command that continues from it."""
    found = checkpoints(out)
    saved = (f"the last checkpoint is {found[-1]}; continue with `finetune train --config "
             f"{out}/config.yaml --resume`" if found else "no checkpoint was saved yet (save_steps)")
    return f"Interrupted: the final model was not saved; {saved}."


def cmd_eval(config: FinetuneConfig, options: dict) -> int:
    from ..finetuner import FineTuner

    if config.data.dataset_name is None:
        raise UsageError("finetune eval: give --dataset_name, the data to evaluate on (its "
                         "validation split when it has one, else every row).")
    ft = FineTuner.from_config(config)
    metrics = ft.evaluate(dataset=config.data.dataset_name, limit=options["limit"],
                          max_new_tokens=options["max_new_tokens"])
    if options["output_file"]:
        from ..train.runinfo import write_json_atomic

        write_json_atomic(options["output_file"], metrics)
    print(json.dumps({k: v for k, v in metrics.items() if k != "samples"}, indent=2))
    return 0


def _prompts(options: dict) -> list[str]:
    prompts = list(options["prompt"] or [])
    if options["prompts_file"]:
        path = Path(options["prompts_file"])
        if not path.is_file():
            raise UsageError(f"--prompts_file {path}: no such file.")
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if path.suffix == ".jsonl":
            try:
                prompts += [json.loads(line)["prompt"] for line in lines]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise UsageError(f"--prompts_file {path}: each line must be a JSON object with a "
                                 f"'prompt' ({exc}).") from exc
        else:
            prompts += lines
    if not prompts:
        raise UsageError("finetune generate: give --prompt TEXT or --prompts_file FILE.")
    return prompts


def cmd_generate(config: FinetuneConfig, options: dict) -> int:
    from ..finetuner import FineTuner

    prompts = _prompts(options)
    ft = FineTuner.from_config(config)
    batch = getattr(ft.inference_handler, "generate_batch", None)
    if batch is not None:
        texts = [g.text for g in batch(prompts, ft.model, ft.tokenizer, ft.device, ft.max_length)]
    else:
        texts = [ft.generate(p) for p in prompts]
    for prompt, text in zip(prompts, texts):
        if len(prompts) > 1:
            print(f"### {prompt}")
        print(text)
    return 0


def cmd_chat(config: FinetuneConfig, options: dict) -> int:
    from ..finetuner import FineTuner

    ft = FineTuner.from_config(config)
    interactive = sys.stdin.isatty()
    if interactive:
        print("Chat with the model. /reset starts over, /exit (or Ctrl+D) quits.")
    messages: list[dict] = []
    stream = getattr(ft.inference_handler, "stream", None)
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() in ("/exit", "/quit"):
            return 0
        text = line.strip()
        if not text:
            continue
        if text == "/reset":
            messages = []
            print("(conversation cleared)")
            continue
        messages.append({"role": "user", "content": text})
        prompt = ft.chat_format.conversation_prompt(messages)
        print("assistant> ", end="", flush=True)
        if stream is not None:
            pieces = []
            for piece in stream(prompt, ft.model, ft.tokenizer, ft.device, ft.max_length):
                pieces.append(piece)
                print(piece, end="", flush=True)
            answer = "".join(pieces).strip()
            print()
        else:
            answer = ft.generate(prompt)
            print(answer)
        messages.append({"role": "assistant", "content": answer})


def cmd_demo(argv: list[str]) -> int:
    from .demo import main as demo_main

    demo_main(argv)
    return 0


def cmd_export(config: FinetuneConfig, options: dict) -> int:
    from .export import cmd_export as run

    return run(config, options)


def cmd_serve(config: FinetuneConfig, options: dict) -> int:
    from .serve import cmd_serve as run

    return run(config, options)


def cmd_web(config: FinetuneConfig, options: dict) -> int:
    from .web import cmd_web as run

    return run(config, options)


_RUN = {"train": cmd_train, "eval": cmd_eval, "generate": cmd_generate, "chat": cmd_chat,
        "export": cmd_export, "serve": cmd_serve, "web": cmd_web}


def usage() -> str:
    lines = ["usage: finetune <command> [--config run.yaml] [--option value ...]", "", "commands:"]
    lines += [f"  {name:<9} {text}" for name, text in COMMANDS.items()]
    lines += ["", "`finetune <command> --help` lists the options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if command not in COMMANDS:
            raise UsageError(f"finetune: unknown command {command!r}{suggest(command, COMMANDS)}; "
                             f"commands: {', '.join(COMMANDS)}.")
        if command == "demo":
            return cmd_demo(rest)
        config, options = parse_command_line(command, rest)
        config.validate(f"finetune {command}")
        if options.get("print_config"):
            print(config.to_yaml(), end="")
            return 0
        return _RUN[command](config, options)
    except (UsageError, FineTuningError) as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
