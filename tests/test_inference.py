"""Generation through the InferenceHandler protocol."""
import pytest

from finetuning_suite import ConfigError, DefaultInferenceHandler, FineTuner, InferenceHandler
from finetuning_suite.infer.generation import render_prompt


class Spy:
    """Wraps model.generate to record what it was asked for (the real model still runs)."""

    def __init__(self, model):
        self.model, self.calls = model, []
        self.real = model.generate

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return self.real(**kwargs)


def test_max_length_bounds_new_tokens(tiny_llama, monkeypatch):
    ft = FineTuner(tiny_llama, max_length=7)
    spy = Spy(ft.model)
    monkeypatch.setattr(ft.model, "generate", spy)
    ft("hello")
    assert spy.calls[-1]["max_new_tokens"] == 7
    ft.generate("hello", max_length=3)
    assert spy.calls[-1]["max_new_tokens"] == 3
    assert spy.calls[-1]["do_sample"] is False  # greedy by default


def test_max_length_is_capped_by_the_context_window(tiny_llama, monkeypatch):
    ft = FineTuner(tiny_llama)  # context window 256, default max_length 1000
    spy = Spy(ft.model)
    monkeypatch.setattr(ft.model, "generate", spy)
    ft("hi")
    n_prompt = spy.calls[-1]["input_ids"].shape[1]
    assert spy.calls[-1]["max_new_tokens"] == 256 - n_prompt


def test_prompt_longer_than_context_is_a_clear_error(tiny_llama):
    ft = FineTuner(tiny_llama)
    with pytest.raises(ConfigError, match="context window is 256"):
        ft("word " * 400)


def test_greedy_is_deterministic_and_excludes_the_prompt(tiny_gpt2):
    ft = FineTuner(tiny_gpt2, max_length=8)
    a, b = ft("Once upon a time"), ft("Once upon a time")
    assert a == b and not a.startswith("Once upon a time")


def test_sampling_knobs_reach_generate(tiny_llama, monkeypatch):
    ft = FineTuner(tiny_llama, max_length=4,
                   inference_handler=DefaultInferenceHandler(do_sample=True, temperature=0.5, top_k=5, seed=0))
    spy = Spy(ft.model)
    monkeypatch.setattr(ft.model, "generate", spy)
    ft("hi")
    call = spy.calls[-1]
    assert call["do_sample"] and call["temperature"] == 0.5 and call["top_k"] == 5


def test_chat_template_is_applied_to_plain_prompts(tokenizer, tiny_llama):
    ft = FineTuner(tiny_llama)
    text, templated = render_prompt("What is 2+2?", tokenizer, ft.model.config)
    assert templated and "<|im_start|>user\nWhat is 2+2?<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    raw, templated = render_prompt("What is 2+2?", tokenizer, ft.model.config, use_chat_template=False)
    assert raw == "What is 2+2?" and not templated


def test_custom_inference_handler(tiny_llama):
    class Echo:
        def generate(self, prompt_text, model, tokenizer, device, max_length):
            return f"{prompt_text}|{device}|{max_length}|{type(model).__name__}"

    assert isinstance(Echo(), InferenceHandler)
    ft = FineTuner(tiny_llama, device="cpu", inference_handler=Echo(), max_length=9)
    assert ft("hi") == "hi|cpu|9|PeftModelForCausalLM"


def test_seq2seq_generation(tiny_t5):
    ft = FineTuner(tiny_t5, max_length=5)
    assert isinstance(ft("translate: hello"), str)


def test_bad_max_length_at_call_time(tiny_llama):
    with pytest.raises(ConfigError, match="max_length=0"):
        FineTuner(tiny_llama).generate("hi", max_length=0)
