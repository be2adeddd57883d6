"""The one configuration: the dataclasses behind the Python API, the `finetune` command, YAML
and the web page.

- `options`: the five sections (model, method, data, generation, training) and `FinetuneConfig`,
  with every default and help text, and `given` (the names set explicitly);
- `values`: reading values (YAML with `1e-3` as a number; text turned into an option's type);
- `checks`: validation, every problem collected into one `ConfigError`.

`FineTuner(...)` builds a `FinetuneConfig` from its arguments (`arguments.py`); `finetune train
--config run.yaml --lora_r 8` from a YAML file and flags (`cli/main.py`); the web page from its
form (`web/form.py`). All three validate with `checks.validate`.

YAML files are flat (as trl, axolotl and LLaMA-Factory recipes are): `model_id: ...`,
`lora_r: 8`, `num_train_epochs: 2`. Any other `TrainingArguments` field may appear too (it goes
to `training_extras`). A value of `null` on an option whose help says "auto" means: chosen from
the model, the method and the data when training starts (see `train/defaults.py`); the chosen
values are saved in the run's `config.yaml`. Imports `errors`, `model.facts` and, inside the
checks, `data` and `model`; never `train`, `infer` or `cli`.
"""
from __future__ import annotations

from .checks import NUMBER_HINTS, check_machine, check_number, option_choices, problems_of, validate
from .options import (AUTO, METHODS, NOT_TRAINING_ARGUMENTS, SECTIONS, DataArguments, FinetuneConfig,
                      GenerationArguments, MethodArguments, ModelArguments, TrainingConfig,
                      default_of, field_names, option_fields, suggest, training_argument_fields,
                      training_argument_names)
from .values import coerce, coerce_all, coerce_to, load_yaml, parse_yaml_mapping, scalar

__all__ = ["AUTO", "METHODS", "NOT_TRAINING_ARGUMENTS", "NUMBER_HINTS", "SECTIONS", "DataArguments",
           "FinetuneConfig", "GenerationArguments", "MethodArguments", "ModelArguments",
           "TrainingConfig", "check_machine", "check_number", "coerce", "coerce_all", "coerce_to",
           "default_of", "field_names", "load_yaml", "option_choices", "option_fields",
           "parse_yaml_mapping", "problems_of", "scalar", "suggest", "training_argument_fields",
           "training_argument_names", "validate"]
