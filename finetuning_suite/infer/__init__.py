"""Inference: generation (the `InferenceHandler` protocol and its default) and evaluation.

Also `checks` (answer checkers of the retention prompts). Imports `errors`, `config` (generation
defaults and their checks), `model` and `data` (the chat format shared with training); never
`train` or `cli`.
"""
