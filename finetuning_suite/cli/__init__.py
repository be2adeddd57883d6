"""The command line: `finetune <train|eval|generate|chat|export|serve|web|demo>` and the main job
(`demo`). `main` parses flags and YAML into the one config; `export`, `serve` and `web` keep their
own options beside their command code.

The top of the stack: builds a config and calls the `FineTuner` facade, `serve` or `web`.
Nothing below imports it.
"""
