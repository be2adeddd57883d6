"""Every lora_* argument is honoured; the spec's T5 defaults are mapped only when left alone."""
import pytest
import torch

from finetuning_suite import ConfigError, FineTuner, TaskType


def lora_config(ft):
    return ft.model.peft_config["default"]


# Every Linear layer but the output head, by architecture (written out by hand).
ALL_LINEAR = {
    "llama": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "gpt2": {"c_attn", "c_proj", "c_fc"},
    "t5": {"q", "k", "v", "o", "wi", "wo"},
    "bart": {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"},
}


def adapted_layers(ft) -> set[str]:
    return {n.split(".lora_A")[0].split(".")[-1] for n, _ in ft.model.named_parameters() if "lora_A" in n}


@pytest.mark.parametrize("kind", ["llama", "gpt2", "t5", "bart"])
def test_spec_defaults_left_alone_adapt_every_linear_layer(tiny_models, kind):
    ft = FineTuner(tiny_models[kind])
    assert adapted_layers(ft) == ALL_LINEAR[kind]
    expected_task = TaskType.SEQ_2_SEQ_LM if kind in ("t5", "bart") else TaskType.CAUSAL_LM
    assert lora_config(ft).task_type == expected_task


def test_spec_targets_passed_explicitly_fit_t5_as_is(tiny_t5):
    ft = FineTuner(tiny_t5, lora_target_modules=["q", "v"], lora_task_type=TaskType.SEQ_2_SEQ_LM)
    assert adapted_layers(ft) == {"q", "v"}


def test_lora_arguments_are_honoured(tiny_llama):
    ft = FineTuner(tiny_llama, lora_r=4, lora_alpha=12, lora_bias="lora_only", lora_dropout=0.0,
                   lora_target_modules=["q_proj", "k_proj", "o_proj"], lora_task_type=TaskType.CAUSAL_LM)
    cfg = lora_config(ft)
    assert (cfg.r, cfg.lora_alpha, cfg.bias, cfg.lora_dropout) == (4, 12, "lora_only", 0.0)
    assert set(cfg.target_modules) == {"q_proj", "k_proj", "o_proj"}
    names = [n for n, _ in ft.model.named_parameters() if "lora_A" in n]
    assert any("k_proj" in n for n in names) and not any("v_proj" in n for n in names)
    layer = ft.model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.lora_A["default"].weight.shape[0] == 4
    assert layer.scaling["default"] == pytest.approx(12 / 4)


def test_only_adapter_weights_train(tiny_llama):
    ft = FineTuner(tiny_llama)
    trainable = [n for n, p in ft.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_explicit_targets_that_do_not_fit_list_what_exists(tiny_llama):
    with pytest.raises(ConfigError) as info:
        FineTuner(tiny_llama, lora_target_modules=["q", "v"])
    message = str(info.value)
    assert "no layer named ['q', 'v']" in message
    assert "q_proj" in message and "all-linear" in message


def test_explicit_task_type_that_does_not_fit(tiny_llama, tiny_t5):
    with pytest.raises(ConfigError, match="lora_task_type='SEQ_2_SEQ_LM' does not fit.*CAUSAL_LM"):
        FineTuner(tiny_llama, lora_task_type=TaskType.SEQ_2_SEQ_LM)
    with pytest.raises(ConfigError, match="lora_task_type='CAUSAL_LM' does not fit.*SEQ_2_SEQ_LM"):
        FineTuner(tiny_t5, lora_task_type="CAUSAL_LM")


def test_unsupported_task_type():
    with pytest.raises(ConfigError, match="lora_task_type=.*SEQ_CLS"):
        FineTuner("/nowhere", lora_task_type=TaskType.SEQ_CLS)


def test_all_linear(tiny_llama):
    ft = FineTuner(tiny_llama, lora_target_modules="all-linear")
    names = {n.split(".")[-4] for n, _ in ft.model.named_parameters() if "lora_A" in n}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= names


def test_fresh_adapter_leaves_outputs_unchanged(tiny_llama):
    from transformers import AutoModelForCausalLM

    ft = FineTuner(tiny_llama, device="cpu")
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    ids = torch.tensor([[1, 5, 9, 42]])
    with torch.no_grad():
        torch.testing.assert_close(ft.model(input_ids=ids).logits, base(input_ids=ids).logits)
