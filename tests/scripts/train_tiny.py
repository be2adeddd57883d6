"""Train the tiny Llama on a small JSONL for a fixed number of steps (used by test_resume.py).

    python train_tiny.py MODEL DATA OUT [--kill-at N] [--resume] [--stage dpo]

--kill-at N: the process sends itself SIGKILL at the end of optimizer step N (a crash with no
chance to clean up), after the Trainer saved any checkpoint due at an earlier step.
"""
import argparse
import os
import signal

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from finetuning_suite import DefaultTrainerConfig, FineTuner  # noqa: E402

torch.set_num_threads(1)


class KillAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class Killing(DefaultTrainerConfig):
    def __init__(self, kill_at, stage="sft", **kw):
        super().__init__(stage=stage, **kw)
        self.kill_at = kill_at

    def build_trainer(self, **kw):
        trainer = super().build_trainer(**kw)
        if self.kill_at:
            trainer.add_callback(KillAt(self.kill_at))
        return trainer


p = argparse.ArgumentParser()
p.add_argument("model")
p.add_argument("data")
p.add_argument("out")
p.add_argument("--kill-at", type=int, default=0)
p.add_argument("--resume", action="store_true")
p.add_argument("--nproc-batch", type=int, default=4)
p.add_argument("--stage", default="sft")
a = p.parse_args()
cfg = Killing(a.kill_at, stage=a.stage, max_steps=8, per_device_train_batch_size=a.nproc_batch, learning_rate=5e-3,
              save_steps=3, save_total_limit=2, logging_steps=1, disable_tqdm=True, warmup_steps=0,
              dataloader_num_workers=0)
ft = FineTuner(model_id=a.model, device="cpu", dataset_name=a.data, max_length=8,
               lora_dropout=0.1, trainer_config=cfg, self_replay=False, stage=a.stage,
               retention_probe=False)
ft.train(a.out, resume_from_checkpoint=True if a.resume else None)
