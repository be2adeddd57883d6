"""Inference: generation (the `InferenceHandler` protocol and its default) and evaluation.

Imports `errors`, `model` and `data` (for the chat template shared with training); never
`train` or `cli`.
"""
