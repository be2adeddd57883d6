"""Train the tiny Llama for a few steps with a fixed global batch (used by test_distributed.py).

    python train_ddp.py MODEL DATA OUT PER_DEVICE_BATCH       # one process
    torchrun --nproc_per_node=2 train_ddp.py MODEL DATA OUT 2 # two processes, same global batch
"""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from finetuning_suite import FineTuner  # noqa: E402

torch.set_num_threads(1)
model, data, out, per_device = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ft = FineTuner(model_id=model, device="cpu", dataset_name=data, max_length=8, lora_dropout=0.0,
               self_replay=False, per_device_train_batch_size=per_device, max_steps=4,
               learning_rate=5e-3, warmup_steps=0, logging_steps=1, save_strategy="no",
               disable_tqdm=True, ddp_backend="gloo" if "RANK" in os.environ else None,
               train_sampling_strategy="random", eval_fraction=0, bf16=False)
metrics = ft.train(out)
print("RESULT", os.environ.get("RANK", "0"), metrics["train_loss"], flush=True)
