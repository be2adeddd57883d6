"""Checkpoints and resume: a run killed with SIGKILL mid-training and resumed ends with the
same adapter as an uninterrupted run with the same seed (peers' known bug class: a LoRA resume
that looks for full weights, or one that silently skips training)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tiny import run_train_script

from finetuning_suite import FineTuner
from finetuning_suite.errors import ConfigError, ModelLoadError



def _data(tmp_path) -> str:
    path = tmp_path / "data.jsonl"
    rows = [{"prompt": f"Code for item {i}?", "completion": f"Item {i} is coded Z{i * 7 % 13}."}
            for i in range(24)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


_run = run_train_script


def _adapter(folder) -> dict:
    return load_file(str(Path(folder) / "adapter_model.safetensors"))


def test_killed_run_resumes_to_the_uninterrupted_result(tiny_llama, tmp_path):
    data = _data(tmp_path)
    _run(tiny_llama, data, tmp_path / "straight")

    crashed = tmp_path / "crashed"
    proc = _run(tiny_llama, data, crashed, "--kill-at", 5, check=False)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert sorted(p.name for p in crashed.glob("checkpoint-*")) == ["checkpoint-3"]
    assert not (crashed / "adapter_model.safetensors").exists()
    # the unfinished folder says what happened and how to go on
    with pytest.raises(ModelLoadError, match=r"checkpoint-3.*resume_from_checkpoint=True"):
        FineTuner(model_id=str(crashed), device="cpu")

    base = _adapter(crashed / "checkpoint-3")
    _run(tiny_llama, data, crashed, "--resume")
    # save_total_limit=2 keeps the last two checkpoints
    assert sorted(p.name for p in crashed.glob("checkpoint-*")) == ["checkpoint-6", "checkpoint-8"]
    state = json.loads((crashed / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    # it trained steps 4..8 (not skipped), logging each one
    logged = [r["step"] for r in state["log_history"] if "loss" in r]
    assert logged == list(range(1, 9))

    a, b = _adapter(tmp_path / "straight"), _adapter(crashed)
    assert a.keys() == b.keys()
    moved = max((a[k] - base[k]).abs().max().item() for k in a)
    assert moved > 1e-3  # the resumed steps changed the adapter
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, f"resumed adapter differs from the uninterrupted one by {worst}"


def test_resume_without_checkpoint_is_refused(tiny_llama, tmp_path):
    ft = FineTuner(model_id=tiny_llama, device="cpu", dataset_name=_data(tmp_path), max_length=8,
                   self_replay=False)
    with pytest.raises(ConfigError, match="holds no checkpoint"):
        ft.train(tmp_path / "fresh", resume_from_checkpoint=True)
    with pytest.raises(ConfigError, match="not a checkpoint folder"):
        ft.train(tmp_path / "fresh", resume_from_checkpoint=str(tmp_path / "nowhere"))
    assert not (tmp_path / "fresh").exists()


def test_reused_output_dir_is_refused_then_replaced(tiny_llama, tiny_gpt2, tmp_path):
    from conftest import fast_trainer

    data = _data(tmp_path)
    out = tmp_path / "out"
    llama = FineTuner(model_id=tiny_llama, device="cpu", dataset_name=data, max_length=8,
                      trainer_config=fast_trainer(max_steps=2), self_replay=False)
    llama.train(out)
    assert (out / "chat_template.jinja").exists()
    before = sorted(p.name for p in out.iterdir())

    gpt2 = FineTuner(model_id=tiny_gpt2, device="cpu", dataset_name=data, max_length=8,
                     trainer_config=fast_trainer(max_steps=2), self_replay=False,
                     use_chat_template=False)
    with pytest.raises(ConfigError, match="already holds a run.*overwrite_output_dir=True"):
        gpt2.train(out)
    assert sorted(p.name for p in out.iterdir()) == before  # untouched

    gpt2.train(out, overwrite_output_dir=True)
    assert not (out / "chat_template.jinja").exists()  # nothing of the Llama run is left
    record = json.loads((out / "finetuner_config.json").read_text())
    assert record["model"]["model_type"] == "gpt2"
    assert sorted(record["files"]) == sorted(p.name for p in out.iterdir() if p.is_file()
                                              and p.name not in ("metrics.jsonl", "report.html",
                                                                 "loss_curve.png"))


def test_interrupted_save_is_reported(tiny_llama, tmp_path):
    from conftest import fast_trainer

    out = tmp_path / "out"
    ft = FineTuner(model_id=tiny_llama, device="cpu", dataset_name=_data(tmp_path), max_length=8,
                   trainer_config=fast_trainer(max_steps=1), self_replay=False)
    ft.train(out)
    FineTuner(model_id=str(out), device="cpu")  # complete: loads
    (out / "finetuner_config.json").unlink()  # as if killed before the marker landed
    with pytest.raises(ModelLoadError, match="save did not complete"):
        FineTuner(model_id=str(out), device="cpu")


def test_output_dir_under_a_file_is_refused_before_training(tiny_llama, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    ft = FineTuner(model_id=tiny_llama, device="cpu", dataset_name=_data(tmp_path), max_length=8,
                   self_replay=False)
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        ft.train(blocker / "run")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_unwritable_output_dir_is_refused_before_training(tiny_llama, tmp_path):
    """A folder that refuses writes to everyone, root included (CI runs as root, and root
    ignores permission bits): /proc. The check tries a real write, so it says so up front."""
    ft = FineTuner(model_id=tiny_llama, device="cpu", dataset_name=_data(tmp_path), max_length=8,
                   self_replay=False)
    with pytest.raises(ConfigError, match="not writable"):
        ft.train("/proc/finetuning-suite-run")
    assert not Path("/proc/finetuning-suite-run").exists()


def test_nan_during_training_stops_and_keeps_last_good_checkpoint(tiny_llama, tmp_path):
    from conftest import fast_trainer

    from finetuning_suite.errors import TrainingError

    out = tmp_path / "out"
    # a learning rate this large overflows the weights within a few steps
    ft = FineTuner(model_id=tiny_llama, device="cpu", dataset_name=_data(tmp_path), max_length=8,
                   trainer_config=fast_trainer(max_steps=30, learning_rate=1e30, save_strategy="steps",
                                               save_steps=1, max_grad_norm=0.0),
                   self_replay=False)
    with pytest.raises(TrainingError, match="NaN or infinite.*last good checkpoint"):
        ft.train(out)
    assert not (out / "adapter_model.safetensors").exists()
    for ckpt in out.glob("checkpoint-*"):
        weights = load_file(str(ckpt / "adapter_model.safetensors"))
        assert all(torch.isfinite(w).all() for w in weights.values()), ckpt


def test_out_of_memory_names_the_options(tiny_llama, tmp_path):
    """A CUDA OOM cannot be provoked on this CPU; a callback raises the exception torch raises
    (torch.OutOfMemoryError) at the first step, and train() must turn it into the package's
    error naming what to change."""
    from conftest import fast_trainer
    from transformers import TrainerCallback

    from finetuning_suite import DefaultTrainerConfig
    from finetuning_suite.errors import TrainingError

    class Boom(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    class WithBoom(DefaultTrainerConfig):
        def build_trainer(self, **kw):
            trainer = super().build_trainer(**kw)
            trainer.add_callback(Boom())
            return trainer

    base = fast_trainer(max_steps=2)
    ft = FineTuner(model_id=tiny_llama, device="cpu", dataset_name=_data(tmp_path), max_length=8,
                   trainer_config=WithBoom(**base.training_args), self_replay=False)
    with pytest.raises(TrainingError) as info:
        ft.train(tmp_path / "out")
    message = str(info.value)
    for option in ("per_device_train_batch_size (now 4)", "gradient_accumulation_steps",
                   "quantize=True", "gradient_checkpointing=True", "max_seq_length"):
        assert option in message


def test_stop_file_ends_the_run_with_a_checkpoint_then_resume_finishes_it(tiny_llama, tmp_path):
    """The web page's stop button: output_dir/STOP ends training at the next step with a
    checkpoint and a normal final save; resume_from_checkpoint then runs the remaining steps."""
    from conftest import fast_trainer
    from transformers import TrainerCallback

    from finetuning_suite import DefaultTrainerConfig

    out = tmp_path / "out"

    class PressStop(TrainerCallback):  # another process would create the file; here, step 2
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 2:
                (out / "STOP").write_text("")

    class WithStop(DefaultTrainerConfig):
        def build_trainer(self, **kw):
            trainer = super().build_trainer(**kw)
            trainer.add_callback(PressStop())
            return trainer

    settings = fast_trainer(max_steps=6).training_args
    ft = FineTuner(model_id=tiny_llama, device="cpu", dataset_name=_data(tmp_path), max_length=8,
                   trainer_config=WithStop(**settings), self_replay=False)
    metrics = ft.train(out)
    assert metrics["stopped_at_step"] == 3
    assert (out / "checkpoint-3").is_dir() and (out / "finetuner_config.json").exists()
    assert not (out / "STOP").exists()
    again = FineTuner(model_id=tiny_llama, device="cpu", dataset_name=_data(tmp_path), max_length=8,
                      trainer_config=DefaultTrainerConfig(**settings), self_replay=False)
    again.train(out, resume_from_checkpoint=True)
    record = json.loads((out / "finetuner_config.json").read_text())
    assert record["metrics"].get("stopped_at_step") is None
    steps = [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
             if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]  # 1-3 before the stop, 4-6 resumed
