"""The command line: `finetune <train|eval|generate|chat|demo>` and the main job (`demo`).

The top of the stack: builds a config from flags and YAML and calls the `FineTuner` facade.
Nothing below imports it.
"""
