"""Guards that stop a run with a clear message instead of a library traceback or a silently
broken model: a non-finite loss or weight (stops before the bad state is checkpointed), and a
device out of memory (names the options that use less)."""
from __future__ import annotations

import math

import torch
from transformers import TrainerCallback

from ..errors import TrainingError
from ..model.run_folder import checkpoints


class NonFiniteGuard(TrainerCallback):
    """Raises `TrainingError` as soon as a logged loss or a trainable weight is NaN or infinite.

    The weight check runs after each optimizer step and before the Trainer saves a checkpoint
    for that step, so the checkpoints on disk hold only finite weights. (The Trainer's own
    `logging_nan_inf_filter` would hide a NaN loss; we switch it off, see `trainer_config`.)
    """

    def __init__(self, model, output_dir):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.output_dir = output_dir

    def on_step_end(self, args, state, control, **kwargs):
        for p in self.params:
            if not torch.isfinite(p).all():
                self._stop(state, "a trainable weight")
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm"):
            value = (logs or {}).get(key)
            if isinstance(value, float) and not math.isfinite(value):
                self._stop(state, f"the {key.replace('_', ' ')} ({value})")
        return control

    def _stop(self, state, what: str):
        found = checkpoints(self.output_dir)
        keep = (f"The last good checkpoint is {found[-1]}." if found
                else "No checkpoint had been saved yet.")
        raise TrainingError(
            f"Training stopped at step {state.global_step}: {what} became NaN or infinite, so the "
            f"run diverged and nothing more was saved. {keep} Lower learning_rate (e.g. by 10x), "
            "keep max_grad_norm=1.0, or train in float32 (dtype='float32').")


def out_of_memory_message(exc: BaseException, args) -> str:
    return (
        f"The device ran out of memory during training ({str(exc).splitlines()[0][:200]}). Use "
        f"less: a smaller per_device_train_batch_size (now {args.per_device_train_batch_size}) "
        "with a larger gradient_accumulation_steps (same effective batch), quantize=True (4-bit "
        "QLoRA), gradient_checkpointing=True, or shorter sequences (max_seq_length).")


def run_trainer(trainer, checkpoint, args) -> dict:
    """`trainer.train(resume_from_checkpoint=checkpoint)`'s metrics; a device out of memory
    becomes a TrainingError naming the options that use less. The model comes back computing
    as it went in (`without_autocast_wrapper`), whether training ended or raised."""
    try:
        return dict(trainer.train(resume_from_checkpoint=checkpoint).metrics)
    except Exception as exc:
        if is_out_of_memory(exc):
            raise TrainingError(out_of_memory_message(exc, args)) from exc
        raise
    finally:
        without_autocast_wrapper(trainer.model)


def without_autocast_wrapper(model) -> None:
    """Undo accelerate's mixed-precision wrapper on `model.forward`. Under bf16/fp16 the Trainer
    (through accelerate's `prepare_model`) replaces the model's forward with one that runs in
    autocast, and leaves it there after training: the in-memory model would then evaluate,
    probe and generate in bf16 while the saved one reloads in fp32 (logits differing by ~0.3
    on a tiny model). accelerate's own `extract_model_from_parallel(keep_fp32_wrapper=False)`
    restores the original forward in place."""
    from accelerate.utils import extract_model_from_parallel

    while model is not None:  # the model itself, or under a DDP/FSDP wrapper its module
        if "_original_forward" in vars(model):
            extract_model_from_parallel(model, keep_fp32_wrapper=False)
        model = getattr(model, "module", None)


def is_out_of_memory(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(exc, oom) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


STOP_FILE = "STOP"  # create output_dir/STOP to end a run gracefully (the web page's stop button)


class StopFileCallback(TrainerCallback):
    """Ends training at the next step when `output_dir/STOP` exists: a checkpoint is saved for
    that step (resume continues from it) and the run finishes normally (final save, report).
    The file is removed when seen. A cheap way for another process to stop a run cleanly."""

    def __init__(self, output_dir):
        from pathlib import Path

        self.path = Path(output_dir) / STOP_FILE
        self.path.unlink(missing_ok=True)  # a stale request from an earlier run, before any starts
        self.stopped_at: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if self.path.exists():
            self.path.unlink(missing_ok=True)
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control
