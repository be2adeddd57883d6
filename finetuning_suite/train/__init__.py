"""Training: trainer configuration, defaults chosen from the data, and what a run writes.

`trainer_config` (the `TrainerConfig` protocol and `DefaultTrainerConfig`), `defaults` (the
rule), `loss` (labelled-only), `guards` (NaN, OOM, STOP), `output_dir` (checked, never mixed,
resume resolution), `saving` (the staged final save, sharded weights gathered), `meter`
(metrics.jsonl, the one MFU definition), `report`, `runinfo` (the run record, versions, atomic
writes). Imports `errors`, `config`, `model` and `data`; never `infer` or `cli`.
"""
