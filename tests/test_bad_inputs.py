"""The bad-input matrix (issue 10, part 3): bad arguments, files, datasets, model and adapter
folders, devices and prompts, driven through the Python API on the tiny models.

For every case: the error is the package's own (a `FineTuningError` subclass, not a library's
exception), its message names the offending thing (field, value, file and line) and says how to
fix it, and nothing new is left in the working folder. No case may reach the Hugging Face hub:
a typo of a built-in dataset or of a local path must be answered locally.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

from finetuning_suite import (ConfigError, DatasetError, DefaultTrainerConfig, FineTuner,
                              FineTuningError, ModelLoadError)
from finetuning_suite.data.preprocessing import DefaultPreprocessor
from finetuning_suite.data.sources import check_source

PAIRS = '{"prompt": "Hi", "completion": "Hello"}\n{"prompt": "Bye", "completion": "Goodbye"}\n'
CHAT_ROW = '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}\n'


# -- shared objects (read-only in the cases) ----------------------------------------------------
@pytest.fixture(scope="module")
def llama_ft(tiny_llama):
    return FineTuner(tiny_llama, device="cpu", max_length=8)


@pytest.fixture(scope="module")
def t5_ft(tiny_t5):
    return FineTuner(tiny_t5, device="cpu", max_length=8)


@pytest.fixture(scope="module")
def gpt2_adapter(tiny_gpt2, tmp_path_factory):
    """A LoRA adapter folder trained (initialised) on the tiny GPT-2."""
    folder = tmp_path_factory.mktemp("gpt2_adapter")
    FineTuner(tiny_gpt2, device="cpu").model.save_pretrained(str(folder))
    return str(folder)


@dataclass
class Ctx:
    """What a case's setup may use: the case's own folder (also the working directory), the tiny
    model folders and the shared FineTuners."""

    tmp: Path
    llama: str
    gpt2: str
    t5: str
    gpt2_adapter: str
    request: pytest.FixtureRequest

    def write(self, name: str, text: str) -> str:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return str(path)

    def shared(self, name: str) -> FineTuner:
        return self.request.getfixturevalue({"llama": "llama_ft", "t5": "t5_ft"}[name])


@dataclass
class Case:
    id: str
    setup: Callable[[Ctx], Callable[[], object]]  # prepares files, returns the call that must fail
    error: type
    names: tuple = ()  # substrings of the message naming the offending thing ("{tmp}": the case's
    #                    folder, "{llama}" / "{gpt2}": the tiny model folders)
    fix: str = ""  # a substring (case-insensitive) of the message that says how to fix it
    marks: tuple = field(default_factory=tuple)


# -- case builders: each returns a setup(ctx) -> the call that must fail -------------------------
def ft(**kw):
    """FineTuner(tiny llama, **kw)."""
    kw.setdefault("device", "cpu")
    return lambda c: (lambda: FineTuner(c.llama, **kw))


def after(prepare: Callable[[Ctx], object], setup):
    """`setup`, once `prepare(ctx)` has made the files it needs."""
    return lambda c: (prepare(c), setup(c))[1]


def data(file: str, text: str, model: str = "llama", **kw):
    """Write `file`, then FineTuner(model, dataset_name=file, **kw).preprocess_data()."""
    def setup(c):
        path = c.write(file, text)
        return lambda: FineTuner(getattr(c, model), device="cpu", dataset_name=path, **kw).preprocess_data()
    return setup


def rows(dataset, **kw):
    """An in-memory dataset through FineTuner(tiny llama, dataset_name=...).preprocess_data()."""
    return lambda c: (lambda: FineTuner(c.llama, device="cpu", dataset_name=dataset, **kw).preprocess_data())


def on(model: str, method: str, *args, **kw):
    """A method of the shared FineTuner on the tiny `model` (generate, evaluate)."""
    return lambda c: (lambda: getattr(c.shared(model), method)(*args, **kw))


def typo(ask: str, existing: str, adapter_of: str | None = None):
    """Make `existing` (a copy of the tiny llama, or of the GPT-2 adapter with `adapter_of`) and
    ask for the misspelt `ask` as model_id (or adapter_path on top of `adapter_of`)."""
    def setup(c):
        shutil.copytree(c.gpt2_adapter if adapter_of else c.llama, c.tmp / existing)
        path = ask.replace("{tmp}", str(c.tmp))
        if adapter_of:
            return lambda: FineTuner(getattr(c, adapter_of), device="cpu", adapter_path=path)
        return lambda: FineTuner(path, device="cpu")
    return setup


def damaged(file: str, damage: Callable[[Path], None], source: str = "llama",
            adapter_of: str | None = None):
    """A copy of the tiny `source` folder ("llama" or "gpt2_adapter") in '{tmp}/damaged' with
    `file` damaged, loaded as model_id (or as adapter_path on top of `adapter_of`)."""
    def setup(c):
        folder = Path(shutil.copytree(getattr(c, source), c.tmp / "damaged"))
        damage(folder / file)
        if adapter_of:
            return lambda: FineTuner(getattr(c, adapter_of), device="cpu", adapter_path=str(folder))
        return lambda: FineTuner(str(folder), device="cpu")
    return setup


def train_after(settings: dict, *args, **kwargs):
    """FineTuner(tiny llama, pairs file, **settings).train(*args, **kwargs) in the case folder."""
    def setup(c):
        path = c.write("pairs.jsonl", PAIRS)
        return lambda: FineTuner(c.llama, device="cpu", dataset_name=path, **settings).train(*args, **kwargs)
    return setup


class Payload:
    """Pickles as a call to print: what torch.load(weights_only=True) must refuse."""

    def __reduce__(self):
        return (print, ("the payload ran",))


def pickled(source: str, adapter_of: str | None = None):
    """A copy of the tiny `source` folder in '{tmp}/pickled' whose safetensors weights are
    replaced by a pickle (.bin) carrying a payload, loaded as model_id or as adapter_path."""
    def setup(c):
        from safetensors.torch import load_file

        folder = Path(shutil.copytree(getattr(c, source), c.tmp / "pickled"))
        name = "adapter_model" if adapter_of else "model"
        weights = load_file(str(folder / f"{name}.safetensors"))
        (folder / f"{name}.safetensors").unlink()
        torch.save({**weights, "payload": Payload()}, folder / ("adapter_model.bin" if adapter_of else "pytorch_model.bin"))
        if adapter_of:
            return lambda: FineTuner(getattr(c, adapter_of), device="cpu", adapter_path=str(folder))
        return lambda: FineTuner(str(folder), device="cpu")
    return setup


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def replace_with(text: str) -> Callable[[Path], None]:
    return lambda path: path.write_text(text, encoding="utf-8")


class BadPreprocessor:
    """Returns a list, not a tokenized datasets.Dataset."""

    def __call__(self, dataset, tokenizer, model_config):
        return [{"text": row} for row in dataset]


NAN, INF = float("nan"), float("inf")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
EMPTY_ANSWERS = '{"prompt": "a", "completion": ""}\n{"prompt": "b", "completion": " "}\n'
MIXED_ROWS = [json.loads(line) for line in (PAIRS + CHAT_ROW).splitlines()]

CASES = [
    # -- arguments: refused by the constructor before anything loads -----------------------
    Case("trust_remote_code-str", ft(trust_remote_code="no"), ConfigError,
         ("trust_remote_code='no'",), "true or false"),
    Case("trust_remote_code-int", ft(trust_remote_code=1), ConfigError,
         ("trust_remote_code=1",), "true or false"),
    Case("lora_alpha-nan", ft(lora_alpha=NAN), ConfigError, ("lora_alpha=nan",), "finite number"),
    Case("lora_alpha-inf", ft(lora_alpha=INF), ConfigError, ("lora_alpha=inf",), "finite number"),
    Case("lora_dropout-nan", ft(lora_dropout=NAN), ConfigError, ("lora_dropout=nan",),
         "finite number"),
    Case("learning_rate-nan", ft(learning_rate=NAN), ConfigError, ("learning_rate=nan",),
         "finite number"),
    Case("learning_rate-inf", ft(learning_rate=INF), ConfigError, ("learning_rate=inf",),
         "finite number"),
    Case("num_train_epochs-nan", ft(num_train_epochs=NAN), ConfigError, ("num_train_epochs=nan",),
         "finite number"),
    Case("num_train_epochs-inf", ft(num_train_epochs=INF), ConfigError, ("num_train_epochs=inf",),
         "finite number"),
    Case("learning_rate-str", ft(learning_rate="fast"), ConfigError, ("learning_rate='fast'",),
         "e.g. 2e-4"),
    Case("batch_size-0", ft(per_device_train_batch_size=0), ConfigError,
         ("per_device_train_batch_size=0",), "positive integer"),
    Case("grad_accum-0", ft(gradient_accumulation_steps=0), ConfigError,
         ("gradient_accumulation_steps=0",), "positive integer"),
    Case("trainer_config-lr-str", ft(trainer_config=DefaultTrainerConfig(learning_rate="fast")),
         ConfigError, ("learning_rate='fast'",), "e.g. 2e-4"),
    Case("trainer_config-epochs-inf", ft(trainer_config=DefaultTrainerConfig(num_train_epochs=INF)),
         ConfigError, ("num_train_epochs=inf",), "finite number"),
    Case("trainer_config-batch-0",
         ft(trainer_config=DefaultTrainerConfig(per_device_train_batch_size=0)),
         ConfigError, ("per_device_train_batch_size=0",), "positive integer"),
    Case("trainer_config-unknown-field", lambda c: (lambda: DefaultTrainerConfig(learning_rat=1e-3)),
         ConfigError, ("'learning_rat'",), "did you mean 'learning_rate'"),
    Case("lora_r-0", ft(lora_r=0), ConfigError, ("lora_r=0",), "e.g. 16"),
    Case("lora_r-negative", ft(lora_r=-1), ConfigError, ("lora_r=-1",), "e.g. 16"),
    Case("lora_r-str", ft(lora_r="8"), ConfigError, ("lora_r='8'",), "e.g. 16"),
    Case("lora_target_modules-empty", ft(lora_target_modules=[]), ConfigError,
         ("lora_target_modules=[]",), "'all-linear'"),
    Case("lora_task_type-unknown", ft(lora_task_type="SEQ_CLS"), ConfigError,
         ("lora_task_type='SEQ_CLS'",), "one of 'CAUSAL_LM', 'SEQ_2_SEQ_LM'"),
    Case("method-unknown", ft(method="lorax"), ConfigError, ("method='lorax'",),
         "one of 'lora', 'qlora', 'full'"),
    Case("quantize-str", ft(quantize="yes"), ConfigError, ("quantize='yes'",), "true or false"),
    Case("quantization_config-unknown-key",
         ft(quantize=True, quantization_config={"load_in_4bits": True}),
         ConfigError, ("quantization_config", "load_in_4bits"), "valid keys are"),
    Case("max_length-0", ft(max_length=0), ConfigError, ("max_length=0",), "e.g. 256"),
    Case("eval_fraction-1.5", ft(eval_fraction=1.5), ConfigError, ("eval_fraction=1.5",),
         "between 0 and 1"),
    Case("format-unknown", ft(format="chatml"), ConfigError, ("format='chatml'",), "one of"),
    Case("preprocessor-class", ft(preprocessor=DefaultPreprocessor), ConfigError,
         ("preprocessor",), "pass an instance"),
    Case("device-cuda-absent", ft(device="cuda"), FineTuningError, ("device='cuda'",),
         "device='cpu'", marks=(no_cuda,)),
    Case("device-tpu", ft(device="tpu"), ConfigError, ("device='tpu'",), "use 'cpu'"),
    Case("dtype-unknown", ft(dtype="float17"), ConfigError, ("dtype='float17'",), "bfloat16"),

    # -- dataset names ------------------------------------------------------------------------
    Case("dataset-missing-file", after(lambda c: c.write("train.jsonl", PAIRS), ft(dataset_name="trian.jsonl")),
         ConfigError, ("trian.jsonl", "no such file"), "did you mean 'train.jsonl'"),
    Case("dataset-local-folder-typo", after(lambda c: (c.tmp / "data").mkdir(), ft(dataset_name="data/x")),
         ConfigError, ("data/x", "no such file or folder"), "check the path"),
    Case("dataset-builtin-typo", ft(dataset_name="dialog"), ConfigError, ("dataset_name='dialog'",),
         "did you mean 'dialogue'"),
    Case("dataset-builtin-typo-evaluate", on("llama", "evaluate", dataset="iso-dates"), DatasetError,
         ("'iso-dates'",), "did you mean 'iso_dates'"),
    Case("dataset-unknown-name", ft(dataset_name="my_data"), ConfigError,
         ("dataset_name='my_data'",), "owner/name"),
    Case("dataset-not-a-dataset", ft(dataset_name=42), ConfigError, ("dataset_name=42",),
         "a list of dicts"),

    # -- dataset files --------------------------------------------------------------------------
    Case("dataset-unsupported-file-type", data("rows.xml", "<rows/>"), DatasetError,
         ("'{tmp}/rows.xml'", "'.xml'"), "use one of"),
    Case("dataset-empty-jsonl", data("empty.jsonl", ""), DatasetError,
         ("{tmp}/empty.jsonl", "no rows"), "add examples"),
    Case("dataset-empty-csv", data("empty.csv", ""), DatasetError,
         ("{tmp}/empty.csv", "empty"), "add examples"),
    Case("dataset-csv-header-only", data("header.csv", "prompt,completion\n"), DatasetError,
         ("{tmp}/header.csv", "no rows"), "add examples"),
    Case("dataset-jsonl-bad-line", data("bad.jsonl", PAIRS + '{"prompt": "a", \n'), DatasetError,
         ("{tmp}/bad.jsonl, line 3", "not valid JSON"), "fix that line"),
    Case("dataset-json-not-json", data("notes.json", "prompt: a\ncompletion: b\n"), DatasetError,
         ("{tmp}/notes.json, line 1", "not valid JSON"), "one JSON array of objects"),
    Case("dataset-json-array-broken", data("rows.json", '[{"prompt": "a",\n "completion": }]'),
         DatasetError, ("{tmp}/rows.json, line 2", "not valid JSON"), "fix that line"),
    Case("dataset-jsonl-row-not-object", data("strings.jsonl", PAIRS + '"just text"\n'),
         DatasetError, ("{tmp}/strings.jsonl, line 3", "'just text'"), "every row must be one"),
    Case("dataset-mixed-formats", data("mixed.jsonl", PAIRS + CHAT_ROW), DatasetError,
         ("{tmp}/mixed.jsonl, line 3", "line 1", "prompt_completion", "messages"), "one format"),
    Case("dataset-mixed-formats-list", rows(MIXED_ROWS), DatasetError,
         ("dataset_name[2]", "prompt_completion", "messages"), "one format"),
    Case("dataset-missing-completion", data("short.jsonl", PAIRS + '{"prompt": "x"}\n'),
         DatasetError, ("{tmp}/short.jsonl, line 3", "['completion']"), "add ['completion']"),
    Case("dataset-null-completion", data("nulls.jsonl", PAIRS + '{"prompt": "x", "completion": null}\n'),
         DatasetError, ("{tmp}/nulls.jsonl, line 3", "'completion' is null"), "remove the row"),
    Case("dataset-null-prompt-list", rows([{"prompt": None, "completion": "x"}]), DatasetError,
         ("dataset_name[0]", "'prompt' is null"), "give it text"),
    Case("dataset-csv-broken-quote",
         data("quote.csv", 'prompt,completion\n"Hello, world,Hi\nfoo,bar\n"baz",qux\n'), DatasetError,
         ("{tmp}/quote.csv, line 2", "not valid CSV", "runs to line 4"), "close every quote"),
    Case("dataset-csv-unclosed-quote-at-end", data("eof.csv", 'prompt,completion\na,b\n"c,d\n'),
         DatasetError, ("{tmp}/eof.csv, line 3", "not valid CSV"), "close every quote"),
    Case("dataset-csv-extra-value", data("extra.csv", "prompt,completion\na,b\nc, d,e\n"), DatasetError,
         ("{tmp}/extra.csv, line 3", "3 values", "header has 2"), "quote values that contain commas"),
    Case("dataset-all-empty-completions", data("silent.jsonl", EMPTY_ANSWERS), DatasetError,
         ("All 2 examples have an empty answer",), "fill in the answers"),
    Case("dataset-unknown-columns", data("qa.jsonl", '{"q": "a", "a": "b"}\n'), DatasetError,
         ("['q', 'a']", "fit no known format"), "column_map={'q': 'prompt', 'a': 'completion'}"),
    Case("dataset-column_map-missing-column", data("pc.jsonl", PAIRS, column_map={"question": "prompt"}),
         DatasetError, ("['question']", "['prompt', 'completion']"), "use those names as column_map keys"),
    Case("dataset-text-on-seq2seq", data("corpus.txt", "line one\nline two\n", model="t5"),
         DatasetError, ("Plain-text data", "encoder-decoder"), "use prompt/completion"),
    Case("preprocessor-returns-list", data("pairs.jsonl", PAIRS, preprocessor=BadPreprocessor()),
         DatasetError, ("BadPreprocessor returned list",),
         "must return a datasets.Dataset with 'input_ids'"),

    # -- evaluate(dataset=...) ------------------------------------------------------------------
    Case("evaluate-missing-file", on("llama", "evaluate", dataset="nope.jsonl"), DatasetError,
         ("'nope.jsonl'", "no such file or folder"), "check the path"),
    Case("evaluate-empty-list", on("llama", "evaluate", dataset=[]), DatasetError,
         ("=[] is empty",), "non-empty list of dicts"),
    Case("evaluate-row-not-a-dict", on("llama", "evaluate", dataset=[{"text": "a"}, "b"]),
         DatasetError, ("[1]='b' is not a dict",), "non-empty list of dicts"),
    Case("evaluate-null-completion", on("llama", "evaluate", dataset=[{"prompt": "a", "completion": None}]),
         DatasetError, ("[0]: 'completion' is null",), "give it text"),
    # The message should call the argument by the name the user gave it: evaluate(dataset=...).
    Case("evaluate-names-its-argument", on("llama", "evaluate", dataset="iso-dates"), DatasetError,
         ("dataset='iso-dates'",), "did you mean 'iso_dates'"),

    # -- model and adapter folders ----------------------------------------------------------
    Case("model_id-dot-path-typo", typo("./models/lama", "models/llama"), ModelLoadError,
         ("'./models/lama'", "no such file or folder"), "did you mean 'models/llama'"),
    Case("model_id-relative-path-typo", typo("models/lama", "models/llama"), ModelLoadError,
         ("'models/lama'", "no such file or folder"), "did you mean 'models/llama'"),
    Case("model_id-absolute-path-typo", typo("{tmp}/lama", "llama"), ModelLoadError,
         ("'{tmp}/lama'", "no such file or folder"), "did you mean '{tmp}/llama'"),
    Case("model_id-file-not-gguf",
         after(lambda c: c.write("model.bin", "weights"), lambda c: lambda: FineTuner("model.bin", device="cpu")),
         ModelLoadError, ("'model.bin'", "not a .gguf file"), "pass a model folder"),
    Case("model-config-json-corrupted", damaged("config.json", replace_with('{"model_type": "llama",')),
         ModelLoadError, ("config.json in '{tmp}/damaged' is not valid JSON:",), "copy it again"),
    Case("model-tokenizer-json-damaged", damaged("tokenizer.json", replace_with('{"version": "1.0"}')),
         ModelLoadError, ("tokenizer in '{tmp}/damaged'", "tokenizer.json", "damaged or incomplete"),
         "copy the folder again"),
    Case("model-safetensors-truncated", damaged("model.safetensors", truncate), ModelLoadError,
         ("model.safetensors in '{tmp}/damaged'", "damaged or incomplete"),
         "copy or download the model again"),
    Case("adapter_path-config-corrupted",
         damaged("adapter_config.json", replace_with("{oops"), "gpt2_adapter", adapter_of="gpt2"),
         ModelLoadError,
         ("adapter_config.json in '{tmp}/damaged' is not valid JSON",), "copy it again"),
    Case("adapter-folder-config-corrupted",
         damaged("adapter_config.json", replace_with("[1, 2"), source="gpt2_adapter"),
         ModelLoadError, ("adapter_config.json in '{tmp}/damaged' is not valid JSON",), "copy it again"),
    Case("adapter-safetensors-truncated",
         damaged("adapter_model.safetensors", truncate, "gpt2_adapter", adapter_of="gpt2"),
         ModelLoadError,
         ("adapter_model.safetensors in '{tmp}/damaged'", "damaged or incomplete"),
         "copy the adapter folder again"),
    Case("adapter-other-base",
         lambda c: (lambda: FineTuner(c.llama, device="cpu", adapter_path=c.gpt2_adapter)),
         ModelLoadError, ("{gpt2}", "{llama}", "does not fit"),
         "pass the adapter's own base as model_id"),
    Case("adapter_path-typo", typo("{tmp}/adaptr", "adapter", adapter_of="gpt2"), ModelLoadError,
         ("adapter_path='{tmp}/adaptr'", "no such folder"), "did you mean '{tmp}/adapter'"),
    Case("adapter_path-not-an-adapter",
         lambda c: (lambda: FineTuner(c.gpt2, device="cpu", adapter_path=c.llama)), ModelLoadError,
         ("adapter_path='{llama}'", "holds no adapter_config.json"),
         "pass a folder written by FineTuner.train"),

    # -- generation -------------------------------------------------------------------------
    Case("generate-empty", on("llama", "generate", ""), ConfigError, ("prompt_text=''",),
         "pass the text to answer"),
    Case("generate-none", on("llama", "generate", None), ConfigError, ("prompt_text=None",),
         "must be a string or a list of messages"),
    Case("generate-no-messages", on("llama", "generate", []), ConfigError, ("prompt_text=[]",),
         "pass at least one"),
    Case("generate-unknown-role", on("llama", "generate", [{"role": "wizard", "content": "x"}]),
         ConfigError, ("role 'wizard'", "'user'", "'assistant'"), "use one of"),
    Case("generate-max_length-0", on("llama", "generate", "Hi", 0), ConfigError,
         ("max_length=0",), "e.g. max_length=64"),
    Case("generate-seq2seq-huge-max_length", on("t5", "generate", "Hi", 10**9), ConfigError,
         ("max_length=1000000000",), "max_length=2048 or less"),

    # -- found by the issue-16 probe ------------------------------------------------------------
    Case("train-epochs-against-max_steps", train_after(dict(max_steps=3), num_train_epochs=5),
         ConfigError, ("num_train_epochs=5", "max_steps=3"), "pass one of the two"),
    Case("fp16-on-cpu", ft(fp16=True), ConfigError, ("fp16=True", "'cpu'"), "leave fp16 off"),
    Case("lora_r-wider-than-the-layers", ft(lora_r=50000), ConfigError,
         ("lora_r=50000", "'k_proj' is 32 x 16"), "lora_r=16 or less"),
    Case("train-output_dir-int", train_after({}, 123), ConfigError, ("output_dir=123",),
         "must be a folder path"),
    Case("device-cpu-index", ft(device="cpu:7"), ConfigError, ("device='cpu:7'",), "use 'cpu'"),
    Case("eval_strategy-without-eval-rows", train_after(dict(eval_strategy="steps", eval_steps=1)),
         ConfigError, ("eval_strategy='steps'", "training rows"), "eval_fraction=0.1"),
    Case("lora_target_modules-unknown-name", ft(lora_target_modules="nope"), ConfigError,
         ("lora_target_modules=['nope']", "q_proj"), "'all-linear'"),
    Case("quantization_config-bool-as-text",
         ft(quantize=True, quantization_config={"load_in_4bit": "yes"}), ConfigError,
         ("load_in_4bit='yes'",), "true or false"),
    Case("quantization_config-quant-type",
         ft(quantize=True, quantization_config={"bnb_4bit_quant_type": "nf5"}), ConfigError,
         ("bnb_4bit_quant_type='nf5'",), "one of ['nf4', 'fp4']"),
    Case("model-pickle-payload", pickled("llama"), ModelLoadError,
         ("{tmp}/pickled", "refused"), "use safetensors weights"),
    Case("adapter-pickle-payload", pickled("gpt2_adapter", adapter_of="gpt2"), ModelLoadError,
         ("{tmp}/pickled", "refused"), "use safetensors weights"),
    Case("output_dir-under-proc", train_after({}, "/proc/finetune-out"), ConfigError,
         ("/proc/finetune-out", "not writable"), "choose a folder you can write to"),
    Case("dataset-lone-surrogate", data("surrogate.jsonl", PAIRS + '{"prompt": "a", "completion": "\\ud83d"}\n'),
         DatasetError, ("{tmp}/surrogate.jsonl, line 3", "\\ud83d"), "write the character itself"),
    Case("dataset-column-type-changes", data("types.jsonl", PAIRS + '{"prompt": ["a"], "completion": "b"}\n'),
         DatasetError, ("{tmp}/types.jsonl, line 3", "'prompt' holds a list", "line 1 it holds text"),
         "fix this row"),
    Case("gguf-damaged-header",
         after(lambda c: c.write("model.gguf", "GGUX not really a gguf file"),
               lambda c: lambda: FineTuner("model.gguf", device="cpu")),
         ModelLoadError, ("model.gguf", "header is damaged"), "download or copy the file again"),
]


def _snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture
def no_hub(monkeypatch):
    """Fail loudly if a case would look a name up on the Hugging Face hub."""
    import finetuning_suite.data.sources as sources
    import finetuning_suite.model.loading as loading

    def hub(*args, **kwargs):
        raise AssertionError(f"went to the hub with {args}")

    monkeypatch.setattr(sources, "_load_hub_or_folder", hub)
    monkeypatch.setattr(sources, "_cached_hub_snapshot", hub)
    real_load_config = loading.load_config

    def local_only(src, *args, **kwargs):
        if not Path(src.path).is_dir():
            hub(src.path)
        return real_load_config(src, *args, **kwargs)

    monkeypatch.setattr(loading, "load_config", local_only)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input_is_refused_cleanly(case, tmp_path, monkeypatch, request, no_hub,
                                      tiny_llama, tiny_gpt2, tiny_t5):
    monkeypatch.chdir(tmp_path)  # relative paths resolve here, and stray files would land here
    ctx = Ctx(tmp_path, tiny_llama, tiny_gpt2, tiny_t5,
              request.getfixturevalue("gpt2_adapter") if "adapter" in case.id else "", request)
    call = case.setup(ctx)
    before = _snapshot(tmp_path)
    with pytest.raises(FineTuningError) as info:
        call()
    message = str(info.value)
    assert isinstance(info.value, case.error), f"{type(info.value).__name__}: {message}"
    subst = {"{tmp}": str(tmp_path), "{llama}": tiny_llama, "{gpt2}": tiny_gpt2}

    def filled(text: str) -> str:
        for key, value in subst.items():
            text = text.replace(key, value)
        return text

    for name in case.names:  # the offending thing, exactly as the user gave it
        assert filled(name) in message, f"{filled(name)!r} not in: {message}"
    assert filled(case.fix).lower() in message.lower(), f"fix {filled(case.fix)!r} not in: {message}"
    assert _snapshot(tmp_path) == before, "files were left behind"


def test_the_matrix_is_large():
    assert len({c.id for c in CASES}) == len(CASES) >= 95


# -- what the fixes must keep working -----------------------------------------------------------
def test_hub_rule_for_dataset_names():
    """Only an owner/name id goes to the hub (checked when loaded); typos of built-in names do not."""
    assert check_source("tatsu-lab/alpaca") is None
    assert check_source("someone/facts") is None  # owner/name is a hub id even if near a built-in
    assert "did you mean 'dialogue'" in check_source("dialog")
    assert "did you mean 'snake_case'" in check_source("Snake-Case")
    assert "owner/name" in check_source("alpaca")


def test_csv_values_stay_text_and_quoted_line_breaks_parse(tmp_path):
    from finetuning_suite.data.sources import load_source

    path = tmp_path / "data.csv"
    path.write_text('prompt,completion\nNone,NA\n01,"two\nlines, and a comma"\n', encoding="utf-8")
    assert load_source(str(path)).to_list() == [
        {"prompt": "None", "completion": "NA"}, {"prompt": "01", "completion": "two\nlines, and a comma"}]


def test_seq2seq_generation_is_capped_by_the_decoder_window(tiny_bart):
    """BART knows its decoder's positions: a huge max_length is capped there, not refused."""
    bart = FineTuner(tiny_bart, device="cpu")
    started = time.time()
    out = bart.inference_handler.generate_batch(["Hi"], bart.model, bart.tokenizer, "cpu", 10**9)[0]
    assert out.new_tokens <= bart.model.config.max_position_embeddings
    assert time.time() - started < 60


def test_rows_of_one_format_with_optional_columns_still_load():
    """The mixed-format check looks at formats, not at identical keys: alpaca rows with and
    without `input`, and columns padded with null by a table writer, are one format."""
    from finetuning_suite.data.sources import load_source

    alpaca = [{"instruction": "a", "output": "b"}, {"instruction": "c", "input": "d", "output": "e"}]
    assert len(load_source(alpaca)) == 2
    padded = [{"prompt": "a", "completion": "b", "messages": None}, {"prompt": "c", "completion": "d"}]
    assert load_source(padded)["completion"] == ["b", "d"]
