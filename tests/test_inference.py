"""Generation through the InferenceHandler protocol: one path (generate -> generate_batch),
left-padded batches, stop strings, EOS accounting, streaming, bad input."""
import threading

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from finetuning_suite import ConfigError, DefaultInferenceHandler, FineTuner, InferenceHandler
from finetuning_suite.infer.generation import Generation, render_prompt


class Spy:
    """Wraps model.generate to record what it was asked for (the real model still runs)."""

    def __init__(self, model):
        self.model, self.calls = model, []
        self.real = model.generate

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return self.real(**kwargs)


class Script(LogitsProcessor):
    """Forces row i of each generate call to emit scripts[i] token by token, then `filler` for
    ever: the generated ids are known in advance, whatever the (random) tiny model thinks."""

    def __init__(self, scripts, filler):
        self.scripts, self.filler, self.start, self.last = scripts, filler, None, None

    def __call__(self, input_ids, scores):
        length = input_ids.shape[1]
        if self.last is None or length != self.last + 1:  # a new generate call
            self.start = length
        self.last = length
        step = length - self.start
        forced = torch.full_like(scores, float("-inf"))
        for i, script in enumerate(self.scripts[: scores.shape[0]]):
            forced[i, script[step] if step < len(script) else self.filler] = 0.0
        return forced


def scripted(tokenizer, texts, eos, **settings):
    """A greedy handler whose rows say `texts[i]` (then EOS where eos[i])."""
    scripts = [tokenizer(t, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if e else [])
               for t, e in zip(texts, eos)]
    filler = tokenizer(" x", add_special_tokens=False)["input_ids"][0]
    processor = Script(scripts, filler)
    return DefaultInferenceHandler(logits_processor=LogitsProcessorList([processor]), **settings), scripts


@pytest.fixture(scope="module")
def llama(tiny_llama):
    return FineTuner(tiny_llama, device="cpu", max_length=8)


PROMPTS = ["Hi", "What is the capital of France?", "Count from one to ten, slowly, in words.",
           "A longer question about several things at once: dates, numbers and the weather?"]


# -- the spec's API, unchanged --------------------------------------------------------------
def test_max_length_bounds_new_tokens(tiny_llama, monkeypatch):
    ft = FineTuner(tiny_llama, max_length=7)
    spy = Spy(ft.model)
    monkeypatch.setattr(ft.model, "generate", spy)
    ft("hello")
    assert spy.calls[-1]["generation_config"].max_new_tokens == 7
    ft.generate("hello", max_length=3)
    config = spy.calls[-1]["generation_config"]
    assert config.max_new_tokens == 3
    assert config.do_sample is False and config.use_cache is True  # greedy, KV cache


def test_max_length_is_capped_by_the_context_window(tiny_llama, monkeypatch):
    ft = FineTuner(tiny_llama)  # context window 256, default max_length 1000
    spy = Spy(ft.model)
    monkeypatch.setattr(ft.model, "generate", spy)
    ft("hi")
    n_prompt = spy.calls[-1]["input_ids"].shape[1]
    assert spy.calls[-1]["generation_config"].max_new_tokens == 256 - n_prompt


def test_the_context_cap_follows_the_longest_prompt_of_a_batch(llama, monkeypatch):
    spy = Spy(llama.model)
    monkeypatch.setattr(llama.model, "generate", spy)
    handler = DefaultInferenceHandler()
    long_prompt = "word " * 100
    n_long = len(llama.tokenizer(llama.tokenizer.apply_chat_template(
        [{"role": "user", "content": long_prompt}], add_generation_prompt=True, tokenize=False),
        add_special_tokens=False)["input_ids"])
    handler.generate_batch(["hi", long_prompt], llama.model, llama.tokenizer, "cpu", 1000)
    assert spy.calls[-1]["generation_config"].max_new_tokens == 256 - n_long


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
    config = spy.calls[-1]["generation_config"]
    assert config.do_sample and config.temperature == 0.5 and config.top_k == 5 and config.top_p == 0.9


def test_greedy_neutralises_sampling_fields_of_the_model(llama, monkeypatch):
    plain = llama.generate("hi")
    gen_config = llama.model.generation_config
    saved = (gen_config.temperature, gen_config.top_p, gen_config.top_k)
    gen_config.temperature, gen_config.top_p, gen_config.top_k = 0.01, 0.05, 2
    try:
        spy = Spy(llama.model)
        monkeypatch.setattr(llama.model, "generate", spy)
        assert llama.generate("hi") == plain
        config = spy.calls[-1]["generation_config"]
        # set, so the model's values (filled only where ours are None) cannot leak in
        assert (config.temperature, config.top_p, config.top_k) == (1.0, 1.0, 50)
    finally:
        gen_config.temperature, gen_config.top_p, gen_config.top_k = saved


def test_sampling_with_a_seed_is_reproducible(tiny_llama):
    handler = DefaultInferenceHandler(do_sample=True, temperature=1.5, seed=3)
    ft = FineTuner(tiny_llama, max_length=6, inference_handler=handler)
    assert ft("hi") == ft("hi")


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
    assert isinstance(DefaultInferenceHandler(), InferenceHandler)
    ft = FineTuner(tiny_llama, device="cpu", inference_handler=Echo(), max_length=9)
    assert ft("hi") == "hi|cpu|9|PeftModelForCausalLM"


def test_seq2seq_generation_says_what_it_is_made_to_say(tiny_t5):
    ft = FineTuner(tiny_t5, max_length=12)
    handler, _ = scripted(ft.tokenizer, ["bonjour le monde"], [True])
    assert handler.generate("translate: hello world", ft.model, ft.tokenizer, "cpu", 12) == "bonjour le monde"
    assert isinstance(ft("translate: hello"), str)


# -- batches -----------------------------------------------------------------------------------
def test_batch_pads_on_the_left_without_changing_the_tokenizer(llama, monkeypatch):
    spy = Spy(llama.model)
    monkeypatch.setattr(llama.model, "generate", spy)
    DefaultInferenceHandler().generate_batch(PROMPTS[:2], llama.model, llama.tokenizer, "cpu", 3)
    ids, mask = spy.calls[-1]["input_ids"], spy.calls[-1]["attention_mask"]
    pad = llama.tokenizer.pad_token_id
    n_short = int(mask[0].sum())
    assert n_short < ids.shape[1] and mask[1].all()
    assert (mask[0, : ids.shape[1] - n_short] == 0).all() and (ids[0, : ids.shape[1] - n_short] == pad).all()
    assert mask[0, -1] == 1  # the prompt ends where generation starts
    assert llama.tokenizer.padding_side == "right"


def test_batched_equals_one_by_one_on_a_tiny_model(llama):
    handler = DefaultInferenceHandler()
    batch = handler.generate_batch(PROMPTS, llama.model, llama.tokenizer, "cpu", 6)
    single = [handler.generate(p, llama.model, llama.tokenizer, "cpu", 6) for p in PROMPTS]
    assert [g.text for g in batch] == single
    assert all(isinstance(g, Generation) for g in batch)


def test_batched_seq2seq_equals_one_by_one(tiny_t5):
    ft = FineTuner(tiny_t5, max_length=6)
    handler = DefaultInferenceHandler()
    prompts = ["translate: hello", "summarize: a much longer input with many words in it"]
    batch = handler.generate_batch(prompts, ft.model, ft.tokenizer, "cpu", 6)
    assert [g.text for g in batch] == [ft(p) for p in prompts]


def test_eos_accounting(llama):
    tok = llama.tokenizer
    texts = ["one two", "alpha beta gamma", "x y z w v u t s r q p o n"]
    handler, scripts = scripted(tok, texts, eos=[True, True, False])
    out = handler.generate_batch(["a", "bb bb", "ccc ccc ccc"], llama.model, tok, "cpu", 6)
    # row 0 and 1 end with EOS inside the limit; row 2 runs to it
    assert out[0] == Generation("one two", out[0].prompt_tokens, len(scripts[0]), True)
    assert out[1] == Generation("alpha beta gamma", out[1].prompt_tokens, len(scripts[1]), True)
    assert out[2].finished_with_eos is False and out[2].new_tokens == 6
    assert out[2].text == tok.decode(scripts[2][:6]).strip()
    chat = lambda p: len(tok(tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,  # noqa: E731
                                                     add_generation_prompt=True), add_special_tokens=False)["input_ids"])
    assert [g.prompt_tokens for g in out] == [chat("a"), chat("bb bb"), chat("ccc ccc ccc")]


def test_eos_on_the_last_allowed_token_counts_as_finished(llama):
    handler, scripts = scripted(llama.tokenizer, ["one two"], eos=[True])
    g = handler.generate_batch(["hi"], llama.model, llama.tokenizer, "cpu", len(scripts[0]))[0]
    assert g.finished_with_eos and g.new_tokens == len(scripts[0]) and g.text == "one two"


def test_stop_strings_cut_the_text(llama):
    tok = llama.tokenizer
    handler, _ = scripted(tok, ["Paris is nice. Lyon too. And more", "No stop here at all"],
                          eos=[True, True])
    out = handler.generate_batch(["a", "b"], llama.model, tok, "cpu", 20, stop=["."])
    assert out[0].text == "Paris is nice" and out[0].finished_with_eos
    assert out[0].new_tokens == len(tok("Paris is nice.", add_special_tokens=False)["input_ids"])
    assert out[1].text == "No stop here at all" and out[1].finished_with_eos
    # the earliest of several stop strings wins; a single string is accepted too
    out = handler.generate_batch(["a"], llama.model, tok, "cpu", 20, stop=["too", " nice"])
    assert out[0].text == "Paris is"
    assert handler.generate_batch(["a"], llama.model, tok, "cpu", 20, stop="Lyon")[0].text == "Paris is nice."


def test_empty_batch_is_empty(llama):
    assert DefaultInferenceHandler().generate_batch([], llama.model, llama.tokenizer, "cpu", 4) == []


def test_generation_leaves_training_mode_as_it_was(llama):
    llama.model.train()
    try:
        llama.generate("hi", max_length=2)
        assert llama.model.training
        list(DefaultInferenceHandler().stream("hi", llama.model, llama.tokenizer, "cpu", 2))
        assert llama.model.training
    finally:
        llama.model.eval()


# -- streaming ---------------------------------------------------------------------------------
def test_stream_joins_to_generate(llama):
    handler = DefaultInferenceHandler()
    for prompt in PROMPTS:
        pieces = list(handler.stream(prompt, llama.model, llama.tokenizer, "cpu", 10))
        assert "".join(pieces) == handler.generate(prompt, llama.model, llama.tokenizer, "cpu", 10)


def test_stream_yields_pieces_and_honours_stop(llama):
    tok = llama.tokenizer
    handler, _ = scripted(tok, ["  Paris is nice. Lyon too.  "], eos=[True])
    pieces = list(handler.stream("a", llama.model, tok, "cpu", 30))
    assert len(pieces) > 1 and "".join(pieces) == "Paris is nice. Lyon too."
    assert "".join(handler.stream("a", llama.model, tok, "cpu", 30, stop=[". L"])) == "Paris is nice"
    assert "".join(handler.stream("a", llama.model, tok, "cpu", 30, stop=["nice"])) == "Paris is"


def test_stream_closed_early_stops_its_thread(llama):
    handler, _ = scripted(llama.tokenizer, [" a b c d e f g h i j k l m n o p"], eos=[False])
    before = threading.active_count()
    it = handler.stream("hi", llama.model, llama.tokenizer, "cpu", 200)
    first = next(it)
    it.close()
    assert first and threading.active_count() == before


# -- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("prompt", ["", "   ", None, 42, [], [{"role": "user"}], {"role": "user", "content": "x"}])
def test_bad_prompts_are_config_errors(llama, prompt):
    with pytest.raises(ConfigError, match="prompt"):
        llama.generate(prompt)
    with pytest.raises(ConfigError, match="prompt"):
        DefaultInferenceHandler().stream(prompt, llama.model, llama.tokenizer, "cpu", 4)  # at call time


@pytest.mark.parametrize("value", [0, -1, True, 2.5, "8"])
def test_bad_max_length_at_call_time(llama, value):
    with pytest.raises(ConfigError, match=f"max_length={value!r}"):
        llama.generate("hi", max_length=value)
    with pytest.raises(ConfigError, match="max_length"):
        DefaultInferenceHandler().generate_batch(["hi"], llama.model, llama.tokenizer, "cpu", value)


def test_bad_batches_and_stops(llama):
    handler = DefaultInferenceHandler()
    with pytest.raises(ConfigError, match="must be a list of prompts"):
        handler.generate_batch("hi", llama.model, llama.tokenizer, "cpu", 4)
    with pytest.raises(ConfigError, match=r"prompts\[1\]=''"):
        handler.generate_batch(["hi", ""], llama.model, llama.tokenizer, "cpu", 4)
    for stop in ([""], [3], 5):
        with pytest.raises(ConfigError, match="stop="):
            handler.generate_batch(["hi"], llama.model, llama.tokenizer, "cpu", 4, stop=stop)


def test_bad_generation_settings_are_config_errors():
    with pytest.raises(ConfigError, match="temperature"):
        DefaultInferenceHandler(do_sample=True, temperature=-1.0)


# -- the real model --------------------------------------------------------------------------
@pytest.mark.slow
def test_embedded_batched_equals_one_by_one(embedded):
    prompts = ["What is the capital of France?", "Hi",
               "Rewrite this date in ISO 8601 format (YYYY-MM-DD): 16 September 1982",
               "Name three colours of the rainbow, separated by commas, and nothing else."]
    handler = DefaultInferenceHandler()
    args = (embedded.model, embedded.tokenizer, "cpu", 16)
    batch = handler.generate_batch(prompts, *args)
    single = [handler.generate(p, *args) for p in prompts]
    assert len({g.prompt_tokens for g in batch}) == 4  # really different lengths
    assert [g.text for g in batch] == single
    assert "Paris" in single[0]


@pytest.mark.slow
def test_embedded_eos_stop_and_stream(embedded):
    handler = DefaultInferenceHandler()
    args = (embedded.model, embedded.tokenizer, "cpu")
    full = handler.generate_batch(["What is the capital of France?"], *args, 30)[0]
    assert "Paris" in full.text and full.finished_with_eos and full.new_tokens < 30
    cut = handler.generate_batch(["What is the capital of France?"], *args, 3)[0]
    assert not cut.finished_with_eos and cut.new_tokens == 3
    stopped = handler.generate_batch(["What is the capital of France?"], *args, 30, stop=["Paris"])[0]
    assert stopped.text == full.text[: full.text.index("Paris")].strip() and stopped.finished_with_eos
    assert "".join(handler.stream("What is the capital of France?", *args, 30)) == full.text
