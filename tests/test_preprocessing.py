"""Formats and label masks, checked token by token."""
import datasets
import pytest
from transformers import AutoConfig

from finetuning_suite import DatasetError, DefaultPreprocessor, FineTuner, Preprocessor
from finetuning_suite.data.chat_template import FALLBACK_CHAT_TEMPLATE
from finetuning_suite.data.formats import detect_format
from finetuning_suite.data.preprocessing import IGNORE_INDEX
from finetuning_suite.train.trainer_config import default_collator
from tiny import gpt2_style_tokenizer, smol_tokenizer


def run(rows, tokenizer, config, **kwargs):
    pre = DefaultPreprocessor(**kwargs)
    return pre(datasets.Dataset.from_list(rows), tokenizer, config), pre


def trained_text(tok, row):
    return tok.decode([t for t, l in zip(row["input_ids"], row["labels"]) if l != IGNORE_INDEX])


@pytest.fixture(scope="module")
def llama_config(tiny_llama):
    return AutoConfig.from_pretrained(tiny_llama)


@pytest.fixture(scope="module")
def t5_config(tiny_t5):
    return AutoConfig.from_pretrained(tiny_t5)


@pytest.mark.parametrize("columns, fmt", [
    (["messages"], "messages"), (["conversations"], "sharegpt"),
    (["instruction", "input", "output"], "alpaca"), (["prompt", "completion"], "prompt_completion"),
    (["input", "output"], "input_output"), (["source", "target"], "source_target"),
    (["question", "answer"], "question_answer"), (["text", "id"], "text")])
def test_format_detection(columns, fmt):
    assert detect_format(columns) == fmt


def test_columns_that_fit_no_format_list_the_formats():
    with pytest.raises(DatasetError) as info:
        detect_format(["foo", "bar"])
    message = str(info.value)
    assert "['foo', 'bar']" in message and "prompt + completion" in message and "column_map" in message


def test_prompt_completion_on_a_base_tokenizer(llama_config):
    tok = gpt2_style_tokenizer()
    ds, pre = run([{"prompt": "2+2=", "completion": " 4"}], tok, llama_config)
    row = ds[0]
    prompt_ids = tok("2+2=")["input_ids"]
    answer_ids = tok(" 4", add_special_tokens=False)["input_ids"]
    assert row["input_ids"] == prompt_ids + answer_ids + [tok.eos_token_id]
    assert row["labels"] == [IGNORE_INDEX] * len(prompt_ids) + answer_ids + [tok.eos_token_id]
    assert ds.column_names == ["input_ids", "attention_mask", "labels"]
    assert pre.stats["format"] == "prompt_completion" and pre.stats["kept"] == 1


def test_train_on_inputs(llama_config):
    tok = gpt2_style_tokenizer()
    ds, _ = run([{"prompt": "2+2=", "completion": " 4"}], tok, llama_config, train_on_inputs=True)
    assert ds[0]["labels"] == ds[0]["input_ids"]


def test_chat_masks_everything_but_assistant_turns(llama_config):
    tok = smol_tokenizer()
    rows = [{"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "Hi, I am Ana."},
                          {"role": "assistant", "content": "Hello Ana!"},
                          {"role": "user", "content": "My name?"},
                          {"role": "assistant", "content": "Ana."}]}]
    ds, _ = run(rows, tok, llama_config)
    row = ds[0]
    full = tok.apply_chat_template(rows[0]["messages"], tokenize=False).rstrip()
    assert row["input_ids"] == tok(full, add_special_tokens=False)["input_ids"]
    # exactly the two answers, each with its closing <|im_end|> (= EOS), are trained
    assert trained_text(tok, row) == "Hello Ana!<|im_end|>\nAna.<|im_end|>"
    assert row["input_ids"][-1] == tok.eos_token_id and row["labels"][-1] == tok.eos_token_id
    assert "Be brief" not in trained_text(tok, row) and "My name" not in trained_text(tok, row)


def test_prompt_completion_on_a_chat_model_uses_the_chat_template(llama_config):
    tok = smol_tokenizer()
    ds, pre = run([{"prompt": "Capital of France?", "completion": "Paris"}], tok, llama_config)
    text = tok.decode(ds[0]["input_ids"])
    assert "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\nParis<|im_end|>" in text
    assert trained_text(tok, ds[0]) == "Paris<|im_end|>"
    assert pre.stats["chat_template"] is True


def test_chat_on_a_base_tokenizer_uses_the_fallback_template_without_changing_it(llama_config):
    tok = gpt2_style_tokenizer()
    tok.pad_token = tok.unk_token
    ds, _ = run([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}],
                tok, llama_config)
    assert tok.chat_template is None  # the preprocessor does not change the shared tokenizer
    assert tok.decode(ds[0]["input_ids"]) == f"user: hi\nassistant: hello{tok.eos_token}"
    assert trained_text(tok, ds[0]) == f" hello{tok.eos_token}"  # the space belongs to the answer token
    tok.chat_template = FALLBACK_CHAT_TEMPLATE  # what FineTuner installs and saves
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "user: hi\nassistant:"


def test_alpaca_on_a_base_model_uses_the_alpaca_prompt(llama_config):
    tok = gpt2_style_tokenizer()
    ds, _ = run([{"instruction": "Add", "input": "2 and 3", "output": "5"}], tok, llama_config)
    text = tok.decode(ds[0]["input_ids"])
    assert "### Instruction:\nAdd\n\n### Input:\n2 and 3\n\n### Response:\n5" in text
    assert trained_text(tok, ds[0]) == f"5{tok.eos_token}"


def test_plain_text_trains_every_token_and_ends_with_eos(llama_config):
    tok = gpt2_style_tokenizer()
    ds, _ = run([{"text": "hello world"}], tok, llama_config)
    assert ds[0]["labels"] == ds[0]["input_ids"] and ds[0]["input_ids"][-1] == tok.eos_token_id


def test_eos_label_survives_padding_when_pad_equals_eos(llama_config):
    tok = gpt2_style_tokenizer()
    tok.pad_token = tok.eos_token
    ds, _ = run([{"prompt": "a", "completion": " b"}, {"prompt": "a long prompt", "completion": " and a long answer"}],
                tok, llama_config)
    batch = default_collator(tok, None, encoder_decoder=False, on_cpu=True)([ds[0], ds[1]])
    short = batch["labels"][0].tolist()
    n = len(ds[0]["input_ids"])
    assert short[n - 1] == tok.eos_token_id  # the real EOS is trained
    assert all(label == IGNORE_INDEX for label in short[n:])  # padding (also EOS ids) is not
    assert batch["input_ids"][0, n:].eq(tok.eos_token_id).all()


def test_truncation_and_dropping_are_counted(llama_config, caplog):
    tok = gpt2_style_tokenizer()
    rows = [{"prompt": "word " * 30, "completion": " answer"}, {"prompt": "short", "completion": " ok"}]
    ds, pre = run(rows, tok, llama_config, max_seq_length=16)
    assert pre.stats["truncated"] == 1 and pre.stats["dropped_all_masked"] == 1 and len(ds) == 1
    assert "truncated" in caplog.text and "dropped" in caplog.text


def test_every_example_masked_is_an_error(llama_config):
    tok = gpt2_style_tokenizer()
    with pytest.raises(DatasetError, match="All 1 examples have every label masked"):
        run([{"prompt": "word " * 30, "completion": " x"}], tok, llama_config, max_seq_length=8)


def test_unknown_roles_are_rejected(llama_config):
    with pytest.raises(DatasetError, match="Row 0: unknown role 'bot'"):
        run([{"messages": [{"role": "bot", "content": "hi"}]}], smol_tokenizer(), llama_config)


def test_column_map(llama_config):
    ds, pre = run([{"q": "2+2=", "a": "4"}], gpt2_style_tokenizer(), llama_config,
                  column_map={"q": "prompt", "a": "completion"})
    assert pre.stats["format"] == "prompt_completion" and len(ds) == 1


def test_seq2seq_labels_are_the_target(t5_config):
    tok = smol_tokenizer()
    ds, _ = run([{"source": "translate: hello", "target": "bonjour"}], tok, t5_config)
    row = ds[0]
    assert row["input_ids"] == tok("translate: hello")["input_ids"]
    assert row["labels"] == tok(text_target="bonjour")["input_ids"] + [tok.eos_token_id]


def test_seq2seq_rejects_plain_text(t5_config):
    with pytest.raises(DatasetError, match="encoder-decoder"):
        run([{"text": "hello"}], smol_tokenizer(), t5_config)


def test_seq2seq_chat_uses_the_last_assistant_turn(t5_config):
    tok = smol_tokenizer()
    ds, _ = run([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}],
                tok, t5_config)
    assert tok.decode(ds[0]["input_ids"]) == "user: hi"
    assert tok.decode(ds[0]["labels"]) == "hello<|im_end|>"


def test_a_custom_preprocessor_takes_over(tiny_llama):
    class Upper:
        def __call__(self, dataset, tokenizer, model_config):
            return dataset.map(lambda r: {"input_ids": tokenizer(r["text"].upper())["input_ids"],
                                          "labels": tokenizer(r["text"].upper())["input_ids"]},
                               remove_columns=dataset.column_names)

    assert isinstance(Upper(), Preprocessor)
    ft = FineTuner(tiny_llama, dataset_name=[{"text": "abc"}], preprocessor=Upper())
    ds = ft.preprocess_data()
    assert ft.tokenizer.decode(ds[0]["input_ids"]) == "ABC"


def test_preprocess_data_returns_the_tokenized_dataset(tiny_llama):
    ft = FineTuner(tiny_llama, dataset_name="dialogue")
    ds = ft.preprocess_data()
    assert ds.column_names == ["input_ids", "attention_mask", "labels"] and len(ds) == 300
    assert ft.eval_dataset is not None and len(ft.eval_dataset) == 40
    assert ft.data_stats["train"]["format"] == "messages"


def test_preprocess_data_without_a_dataset(tiny_llama):
    from finetuning_suite import ConfigError

    with pytest.raises(ConfigError, match="needs a dataset"):
        FineTuner(tiny_llama).preprocess_data()


def test_training_prompt_is_exactly_the_generation_prompt(tiny_llama):
    """The tokens before the first trained label are the tokens generate() feeds the model."""
    from finetuning_suite.infer.generation import render_prompt

    ft = FineTuner(tiny_llama, dataset_name=[{"prompt": "Capital of France?", "completion": "Paris"}])
    row = ft.preprocess_data()[0]
    first = next(i for i, label in enumerate(row["labels"]) if label != IGNORE_INDEX)
    text, templated = render_prompt("Capital of France?", ft.tokenizer, ft.model.config)
    assert templated
    assert row["input_ids"][:first] == ft.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_a_preprocessor_that_returns_no_labels_is_caught(tiny_llama):
    class NoLabels:
        def __call__(self, dataset, tokenizer, model_config):
            return dataset.map(lambda r: {"input_ids": tokenizer(r["text"])["input_ids"]},
                               remove_columns=dataset.column_names)

    ft = FineTuner(tiny_llama, dataset_name=[{"text": "abc"}], preprocessor=NoLabels())
    with pytest.raises(DatasetError, match="NoLabels returned Dataset with columns \\['input_ids'\\]"):
        ft.preprocess_data()
