"""Many processes: `finetune train` under torchrun (DDP and FSDP, gloo on CPU) gives the adapter
one process gives with the same global batch; only rank 0 writes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

SCRIPT = Path(__file__).parent / "scripts" / "train_ddp.py"
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent))

pytestmark = pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed")


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("ddp") / "data.jsonl"
    rows = [{"prompt": f"Code for item {i}?", "completion": f"Item {i} is coded Z{i * 7 % 13}."}
            for i in range(24)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def single(tiny_llama, data, tmp_path_factory):
    """One process, batch 4: the reference."""
    out = tmp_path_factory.mktemp("single") / "run"
    proc = subprocess.run([sys.executable, str(SCRIPT), tiny_llama, data, str(out), "4"],
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _torchrun(tiny_llama, data, out, *extra):
    cmd = [TORCHRUN, "--nproc_per_node=2", "-m", "finetuning_suite", "train",
           "--model_id", tiny_llama, "--dataset_name", data, "--output_dir", str(out),
           "--max_steps", "4", "--per_device_train_batch_size", "2", "--learning_rate", "5e-3",
           "--warmup_steps", "0", "--logging_steps", "1", "--save_strategy", "no",
           "--lora_dropout", "0", "--self_replay", "false", "--max_length", "8",
           "--ddp_backend", "gloo", "--disable_tqdm", "true", "--eval_fraction", "0",
           # fp32: the runs are compared to 1e-5, finer than bf16 autocast's rounding of a
           # batch split in two
           "--bf16", "false",
           # length grouping builds its batches per process: with it the global batches of one and
           # two processes differ in composition; random order makes them the same examples
           "--train_sampling_strategy", "random", *extra]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _same_adapter(a_dir, b_dir, tol=1e-5):
    a = load_file(str(Path(a_dir) / "adapter_model.safetensors"))
    b = load_file(str(Path(b_dir) / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape, k  # full tensors, not one rank's shard
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < tol, f"adapter differs from the one-process run by {worst}"


def _losses(run):
    return [r["loss"] for r in map(json.loads, (Path(run) / "metrics.jsonl").read_text().splitlines())
            if "loss" in r]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_equal_one_with_the_same_global_batch(strategy, tiny_llama, data, single, tmp_path):
    extra = ["--fsdp", "full_shard auto_wrap", "--fsdp_config",
             '{"transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]}'] if strategy == "fsdp" else []
    out = tmp_path / strategy
    proc = _torchrun(tiny_llama, data, out, *extra)
    assert proc.stdout.count("Saved to") == 1  # rank 0 reports, rank 1 stays quiet
    record = json.loads((out / "finetuner_config.json").read_text())
    assert record["world_size"] == 2
    assert record["global_batch_size"] == 4
    assert record["training"]["max_steps"] == 4
    losses = _losses(out)
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert losses == pytest.approx(_losses(single), rel=1e-4)
    _same_adapter(single, out)
    assert not list(out.glob("**/*.tmp")) and not (out / ".saving").exists()
