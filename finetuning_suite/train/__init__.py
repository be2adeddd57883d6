"""Training: trainer configuration, defaults chosen from the data, and what a run writes.

`trainer_config` (the `TrainerConfig` protocol and `DefaultTrainerConfig`), `runinfo` (the run
record, versions, atomic writes). Imports `errors`, `model` and `data`; never `infer` or `cli`.
"""
