"""The shipped accelerate launch configs parse with accelerate's own loader and say what they claim."""
from pathlib import Path

import pytest

FOLDER = Path(__file__).resolve().parent.parent / "recipes" / "accelerate"
EXPECTED = {"ddp.yaml": "MULTI_GPU", "fsdp.yaml": "FSDP", "deepspeed_zero2.yaml": "DEEPSPEED",
            "deepspeed_zero3.yaml": "DEEPSPEED"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_config_loads(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(FOLDER / name))
    assert config.distributed_type.value == EXPECTED[name]
    assert config.num_processes >= 2
    text = (FOLDER / name).read_text()
    assert "accelerate launch --config_file recipes/accelerate/" + name in text  # its launch line
    if name.startswith("deepspeed"):
        stage = int(name[-6])
        assert config.deepspeed_config["zero_stage"] == stage
