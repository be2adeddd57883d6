"""Preference and reward training on TRL's trainers: what each stage needs around them.

`stage` (`config`): `sft` is the package's own trainer (`trainer_config`); `dpo`, `kto`, `orpo`
and `grpo` are TRL's `DPOTrainer`, `KTOTrainer`, `ORPOTrainer` (experimental in TRL) and
`GRPOTrainer`, whose losses we do not rewrite. What this module adds is what their users miss:

- the config each trainer reads (`stage_arguments`), with TRL's GPU-minded defaults replaced
  where they break a CPU run or a small one: the precision chosen for the device
  (`train/precision.py`; TRL turns bf16 on everywhere, and a CPU without native bf16 runs it
  several times slower), no gradient
  checkpointing unless asked for (TRL's default), TRL's learning rate (1e-6, for full
  fine-tuning of large models) replaced by the rule's (`train/defaults.py`); the reference
  model's log-probabilities precomputed once before training for DPO and KTO
  (`precompute_ref_log_probs`): for LoRA the model before training *is* the base (the adapter
  starts at zero), for full fine-tuning its starting weights, so no second copy of the model is
  ever kept in memory;
- GRPO's batch shape: the batch (per device x processes x accumulation) must be a multiple of
  the group size (`num_generations`); `grpo_batch` makes it one, or refuses with the numbers
  to use;
- the trainer itself (`build_stage_trainer`), handed a tokenizer copy carrying the run's chat
  template (`data/chat_template.py`) and, for GRPO, the checked reward functions
  (`train/rewards.py`).
"""
from __future__ import annotations

import importlib
import warnings

from ..errors import ConfigError

_CLASSES = {"dpo": ("trl", "DPOConfig", "DPOTrainer"), "kto": ("trl", "KTOConfig", "KTOTrainer"),
            "orpo": ("trl.experimental.orpo", "ORPOConfig", "ORPOTrainer"),
            "grpo": ("trl", "GRPOConfig", "GRPOTrainer")}


def _import(stage: str, which: int):
    if stage not in _CLASSES:
        raise ConfigError(f"stage={stage!r}: TRL trains dpo, kto, orpo and grpo; sft is our own trainer.")
    module, *names = _CLASSES[stage]
    try:
        with warnings.catch_warnings():
            # ORPO lives in trl.experimental, which warns on import; the docs say it is experimental
            warnings.filterwarnings("ignore", message=".*trl.experimental")
            return getattr(importlib.import_module(module), names[which])
    except ImportError as exc:
        raise ConfigError(f"stage={stage!r} needs trl (`pip install -e .` installs it): {exc}") from exc


def config_class(stage: str):
    return _import(stage, 0)


def trainer_class(stage: str):
    return _import(stage, 1)


def grpo_batch(per_device: int | None, num_generations: int, world_size: int, accumulation: int,
               given: bool) -> int:
    """The per-device batch for GRPO: the batch a step generates for (per device x processes x
    accumulation) must hold whole groups of `num_generations` answers. A batch that was not
    given becomes the smallest multiple that holds two prompts' groups; one that was given and
    does not divide is refused with the numbers that would."""
    per_device = per_device or num_generations * 2
    if (per_device * world_size * accumulation) % num_generations == 0:
        return per_device
    if not given:
        step = num_generations // _gcd(num_generations, world_size * accumulation)
        return -(-per_device // step) * step
    fits = [b for b in range(1, 4 * num_generations + 1) if (b * world_size * accumulation) % num_generations == 0]
    raise ConfigError(
        f"per_device_train_batch_size={per_device} x {world_size} process(es) x "
        f"gradient_accumulation_steps={accumulation} = {per_device * world_size * accumulation} answers "
        f"per step cannot be split into groups of num_generations={num_generations}. Pass "
        f"per_device_train_batch_size={fits[0]} (or {', '.join(map(str, fits[1:3]))}), or a "
        f"num_generations that divides {per_device * world_size * accumulation}.")


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


def stage_arguments(stage: str, kwargs: dict, settings: dict, device: str) -> dict:
    """The keyword arguments of `stage`'s TRL config: ours (`kwargs`: TrainingArguments values,
    defaults included) plus the stage's `settings` (beta, num_generations, max_length, ...)."""
    out = dict(kwargs)
    out.setdefault("gradient_checkpointing", False)
    if "gradient_checkpointing_kwargs" not in out and out["gradient_checkpointing"]:
        out["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    if device == "cpu":
        out.setdefault("use_cpu", True)
    out.setdefault("remove_unused_columns", stage != "grpo")  # GRPO's extra columns reach the rewards
    for name, value in settings.items():
        if value is not None:
            out[name] = value
    if stage in ("dpo", "kto"):
        out.setdefault("precompute_ref_log_probs", True)
    if stage == "kto" and out.get("loss_type", "kto") == "kto":
        # KTO's KL term pairs each row with its neighbour in a fixed order; the rows were
        # shuffled once when they were made (data/preference.py), so a sequential pass is random
        out["train_sampling_strategy"] = "sequential"
    if stage == "grpo":
        world = int(out.pop("_world_size", 1))
        out["per_device_train_batch_size"] = grpo_batch(
            out.get("per_device_train_batch_size"), out["num_generations"], world,
            out.get("gradient_accumulation_steps") or 1, given=out.pop("_batch_given", False))
        out.setdefault("per_device_eval_batch_size", out["num_generations"])
    else:
        out.pop("_world_size", None)
        out.pop("_batch_given", None)
    return out


def build_stage_trainer(stage: str, *, model, args, tokenizer, train_dataset, eval_dataset,
                        reward_funcs=None):
    """TRL's trainer for `stage`. `tokenizer` is a copy carrying the run's chat template; for
    GRPO `reward_funcs` are the checked reward functions (`train.rewards.reward_functions`)."""
    cls = trainer_class(stage)
    common = dict(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                  processing_class=tokenizer)
    if stage == "grpo":
        return cls(reward_funcs=reward_funcs, **common)
    return cls(**common)


def stage_settings(config) -> dict:
    """The stage's own settings a config gives (TRL config fields by their TRL names), for the
    default trainer config: beta, GRPO's group and answer length and reward weights, and the
    sequence length the trainer truncates to (our `max_seq_length`, TRL's `max_length`).

    GRPO samples its groups with the run's generation settings (`temperature`, `top_p`,
    `top_k`: 0.7, 0.9 and 50 unless given), not TRL's 1.0 / 1.0 / 0: at temperature 1.0 over the
    whole vocabulary the embedded 135M model drifts into nonsense (of 160 sampled answers to the
    `sums` validation prompts 33 contained the right number; 62 at 0.7 / 0.9 / 50), and a group
    of nonsense gives the rewards nothing to tell apart."""
    t = config.training
    if t.stage == "sft":
        return {}
    out = {name: getattr(t, name) for name in ("beta", "num_generations", "max_completion_length",
                                              "reward_weights") if getattr(t, name) is not None}
    if t.stage == "grpo":
        g = config.generation
        out.update(temperature=g.temperature, top_p=g.top_p, top_k=g.top_k)
    if t.stage != "grpo":
        out.pop("num_generations", None)
        out.pop("max_completion_length", None)
        out.pop("reward_weights", None)
        if config.data.max_seq_length is not None:
            out["max_length"] = config.data.max_seq_length
    return out


def drop_reference_adapter(model) -> None:
    """TRL keeps the starting adapter as a frozen copy named "ref" when handed a PEFT model; the
    run folder holds the trained adapter only."""
    config = getattr(model, "peft_config", None)
    if isinstance(config, dict) and "ref" in config and len(config) > 1:
        model.delete_adapter("ref")
        if hasattr(model, "set_adapter") and "default" in model.peft_config:
            model.set_adapter("default")
