"""Shared fixtures: tiny model folders built once per session, and the embedded model (converted
once into the user cache, then loaded in seconds)."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from tiny import build, smol_tokenizer  # noqa: E402

# Two threads at most (CI has 2 cores); OMP_NUM_THREADS=1 leaves a core to a benchmark.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, min(2, os.cpu_count() or 1))))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_models")
    return {kind: build(kind, root / kind) for kind in ("llama", "gpt2", "t5", "bart")}


@pytest.fixture(scope="session")
def tiny_llama(tiny_models):
    return tiny_models["llama"]


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_models):
    return tiny_models["gpt2"]


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory):  # built on demand: few tests need it
    return build("qwen2", tmp_path_factory.mktemp("tiny_qwen2") / "qwen2")


@pytest.fixture(scope="session")
def tiny_t5(tiny_models):
    return tiny_models["t5"]


@pytest.fixture(scope="session")
def tiny_bart(tiny_models):
    return tiny_models["bart"]


@pytest.fixture(scope="session")
def tokenizer():
    return smol_tokenizer()


@pytest.fixture(scope="session")
def embedded():
    """One FineTuner on the real embedded model, shared by the read-only tests."""
    from finetuning_suite import FineTuner

    return FineTuner(device="cpu", max_length=40)


def fast_trainer(**overrides):
    """Trainer settings for tiny models: a high learning rate so a few steps visibly learn."""
    from finetuning_suite import DefaultTrainerConfig

    settings = dict(per_device_train_batch_size=4, learning_rate=5e-3, logging_steps=1,
                    save_strategy="no", disable_tqdm=True, warmup_steps=0)
    settings.update(overrides)
    return DefaultTrainerConfig(**settings)
