"""`AdapterSet`: several runs' LoRA adapters on one loaded base model, each answering as its run.

A user with several runs on one base (a facts adapter, a style adapter) serves or compares them
without loading the base once per run: the first adapter run is loaded as `FineTuner(run)`
loads it (the base, then its adapter), every other run's adapter is put on the same `PeftModel`
with `PeftModel.load_adapter` (`model.lora.attach_lora`: only its LoRA weights are added), and
the base itself answers too, with the adapters disabled.

    models = AdapterSet({"facts": "runs/facts", "style": "runs/style"}, device="cpu")
    models["facts"].generate("What is the capital of Zenthia?")   # = FineTuner("runs/facts").generate(...)
    models.base.generate("Hi")                                     # the base alone

Each model of the set is a `ModelView`: the shared model plus what its own run folder says (its
tokenizer, with the chat template it was trained with; its `ChatFormat`, generation settings,
system prompt and max_length), computed by `RunSettings`, as `FineTuner` computes them, and
`active()`, the context in which the shared model *is* that model (`set_adapter`, or
`disable_adapter()` for the base). The model has one active adapter at a time, so whoever
generates runs one view's generation at a time: the server has one engine worker, the web
page's chat holds a lock and answers one side after the other.

Refused before any model is loaded, each with the run and the fix: adapters trained on
different bases; a fully fine-tuned run (a whole model, not an adapter); a model that is not the
adapters' base; two models of one name; adapters whose bases would load differently (4-bit and
not, another dtype). A plain model among the runs is their base, given to name it.

Light at import (no torch): `finetune serve --help` reads `default_name` and `EMBEDDED_NAME`.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .model.embedded import EMBEDDED_MODEL_NAME

EMBEDDED_NAME = EMBEDDED_MODEL_NAME.lower()  # what the embedded model is called when served
# FineTuner arguments an AdapterSet decides per model, not for all of them
_PER_MODEL = ("model_id", "adapter_path", "inference_handler")


def default_name(model_id, adapter_path=None) -> str:
    """The name a model is known by when none is given: the run or model folder's name, a .gguf
    file's stem, the hub id, or `EMBEDDED_NAME` (None: the embedded model, or the adapter's)."""
    if model_id is None or str(model_id).startswith("embedded:"):
        return Path(adapter_path).resolve().name if adapter_path else EMBEDDED_NAME
    path = Path(model_id).expanduser()
    if path.is_file():
        return path.stem
    if path.exists():
        return path.resolve().name
    return str(model_id)


@dataclass
class ModelView:
    """One model of a set as its user knows it: a run (its adapter on the shared base) or the
    base alone. It has the attributes the server and the web page read from a `FineTuner`
    (model, tokenizer, device, chat_format, inference_handler, max_length)."""

    name: str
    model: Any  # the shared PeftModel
    tokenizer: Any
    device: str
    chat_format: Any  # data.chat_template.ChatFormat
    inference_handler: Any  # infer.generation.DefaultInferenceHandler
    max_length: int
    adapter: str | None  # its PEFT adapter name; None: the base, with every adapter disabled
    model_id: Any  # what was given (the run folder), or the base's source

    @contextmanager
    def active(self) -> Iterator[None]:
        """The shared model is this model inside the block (not thread-safe: one caller at a time)."""
        if self.adapter is None:
            with self.model.disable_adapter():
                yield
            return
        if self.model.active_adapter != self.adapter:
            self.model.set_adapter(self.adapter, inference_mode=True)
        yield

    def generate(self, prompt_text, max_length: int | None = None) -> str:
        """What `FineTuner(model_id).generate(prompt_text, max_length)` answers."""
        with self.active():
            return self.inference_handler.generate(
                prompt_text, self.model, self.tokenizer, self.device,
                self.max_length if max_length is None else max_length)


@dataclass
class _Planned:
    name: str
    model_id: str
    settings: Any  # RunSettings

    @property
    def is_adapter(self) -> bool:
        return self.settings.source.adapter_path is not None

    def shown(self) -> str:
        return f"{self.name}={self.model_id!r}"


class AdapterSet:
    """Several runs' adapters (and their base) on one loaded base model; see the module docstring.

    models: {name: run folder} or (name, model_id) pairs, in the order to list them: runs with a
        LoRA adapter, all trained on one base, and at most one plain model, that base (to name
        it). A model_id of None is the embedded model.
    base_name: the base's name when it is not among `models` (default: `default_name` of the
        base, e.g. its folder's name).
    options: FineTuner keyword arguments for every model (device="cpu", max_length=...); each
        run's saved settings yield to them, as in `FineTuner(run, **options)`.
    """

    def __init__(self, models: Mapping[str, Any] | Sequence[tuple[str, Any]], *,
                 base_name: str | None = None, **options):
        planned, base_name = _plan(_pairs(models), base_name, options)
        adapters = [p for p in planned if p.is_adapter]
        given_base = next((p for p in planned if not p.is_adapter), None)
        self.views: dict[str, ModelView] = {}
        self._load(planned, adapters, given_base, base_name, options)

    @staticmethod
    def check(models: Mapping[str, Any] | Sequence[tuple[str, Any]], *,
              base_name: str | None = None, **options) -> None:
        """Raise ConfigError (or ModelLoadError for a path that is not a model) when `models`
        cannot share one base; nothing is loaded."""
        _plan(_pairs(models), base_name, options)

    def _load(self, planned, adapters, given_base, base_name, options) -> None:
        from .finetuner import FineTuner
        from .model.loading import ModelSource, load_run_tokenizer
        from .model.lora import attach_lora
        from .run_settings import RunSettings

        first = adapters[0]
        self.finetuner = ft = FineTuner(**options, model_id=first.model_id)  # the base, once
        self.model, self.device = ft.model, ft.device
        views = {first.name: ModelView(first.name, ft.model, ft.tokenizer, ft.device, ft.chat_format,
                                       ft.inference_handler, ft.max_length, ft.model.active_adapter,
                                       first.model_id)}
        for i, p in enumerate(adapters[1:], 1):
            attach_lora(ft.model, p.settings.source.adapter_path, f"adapter{i}")
            views[p.name] = self._view(p.name, p.model_id, p.settings, f"adapter{i}",
                                       load_run_tokenizer(p.settings.source,
                                                          p.settings.config.model.trust_remote_code))
        if given_base is not None:
            base = given_base
        else:  # the base as FineTuner(<the adapters' base>, **options) sees it
            source = first.settings.source.source
            base = _Planned(base_name, source, RunSettings.of({**options, "model_id": source}))
        src = base.settings.source
        views[base.name] = self._view(base.name, base.model_id, base.settings, None, load_run_tokenizer(
            ModelSource(src.source, src.path), base.settings.config.model.trust_remote_code))
        self.views = {p.name: views[p.name] for p in planned}
        self.views.setdefault(base.name, views[base.name])
        self.base = views[base.name]

    def _view(self, name, model_id, settings, adapter, tokenizer) -> ModelView:
        fmt = settings.chat_format(tokenizer, self.model.config)
        return ModelView(name, self.model, tokenizer, self.device, fmt, settings.inference_handler(fmt),
                         settings.max_length, adapter, model_id)

    def __getitem__(self, name: str) -> ModelView:
        return self.views[name]

    def __iter__(self):
        return iter(self.views.values())

    def __len__(self) -> int:
        return len(self.views)

    @property
    def names(self) -> list[str]:
        return list(self.views)

    def __repr__(self) -> str:
        shown = ", ".join(f"{v.name}={v.model_id!r}{' (base)' if v.adapter is None else ''}" for v in self)
        return f"AdapterSet({shown})"


# -- the checks, before anything is loaded ---------------------------------------------------------
def _pairs(models) -> list:
    if isinstance(models, Mapping):
        return list(models.items())
    return [tuple(p) if isinstance(p, (tuple, list)) else p for p in models]


def _plan(pairs: list, base_name: str | None, options: dict) -> tuple[list[_Planned], str | None]:
    from .model.run_folder import RUN_CONFIG_FILE
    from .run_settings import RunSettings

    where = "AdapterSet"
    given = sorted(k for k in options if k in _PER_MODEL)
    if given:
        raise ConfigError(f"{where}: {', '.join(given)} is set per model: give each run as a "
                          "(name, run folder) pair instead.")
    if not pairs:
        raise ConfigError(f"{where}: no models given; pass e.g. {{'facts': 'runs/facts', 'style': "
                          "'runs/style'}.")
    names: dict[str, Any] = {}
    for pair in pairs:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise ConfigError(f"{where}: {pair!r} must be a (name, model_id) pair.")
        name, model_id = pair
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise ConfigError(f"{where}: the name {name!r} of {model_id!r} must be non-empty text "
                              "without surrounding spaces, e.g. 'facts'.")
        if name in names:
            raise ConfigError(f"{where}: the name {name!r} is given twice ({names[name]!r} and "
                              f"{model_id!r}); a request names the model it wants, so give each "
                              f"its own name (e.g. {name}-2={model_id}).")
        names[name] = model_id
    if base_name is not None and base_name in names:
        raise ConfigError(f"{where}: base_name={base_name!r} is also the name of {names[base_name]!r}; "
                          "choose another name for the base.")
    planned = [_Planned(n, m, RunSettings.of({**options, "model_id": m})) for n, m in pairs]
    for p in planned:
        folder = Path(os.fspath(p.model_id)).expanduser() if p.model_id is not None else None
        if not p.is_adapter and folder is not None and (folder / RUN_CONFIG_FILE).is_file() \
                and p.settings.config.method.method == "full":
            raise ConfigError(
                f"{where}: {p.shown()} is a fully fine-tuned run (method 'full'): a whole model, "
                "not an adapter, so it cannot share a base with the others. Serve or load it on its "
                "own (e.g. `finetune serve --model_id " f"{p.model_id}`), or train it with method "
                "'lora' to put it beside them.")
    adapters = [p for p in planned if p.is_adapter]
    if not adapters:
        raise ConfigError(f"{where}: {', '.join(p.shown() for p in planned)} holds no adapter run; "
                          "give runs trained with LoRA or QLoRA (folders with adapter_config.json).")
    first = adapters[0]
    base = first.settings.source.source
    for p in planned:
        if p is first:
            continue
        if p.is_adapter and p.settings.source.source != base:
            raise ConfigError(
                f"{where}: {p.shown()} was trained on {p.settings.source.source!r}, but "
                f"{first.shown()} on {base!r}: one base is loaded for all, so every adapter must "
                "be trained on it. Serve the runs of each base separately (one server each).")
        if not p.is_adapter and p.settings.source.source != base:
            raise ConfigError(
                f"{where}: {p.shown()} is a model, not an adapter run, and not the base the "
                f"adapters were trained on ({base!r}). Give adapter runs of one base, and that base "
                "itself only to name it.")
        if p.is_adapter and _load_kind(p.settings) != _load_kind(first.settings):
            raise ConfigError(
                f"{where}: {p.shown()} loads its base {_describe(p.settings)}, {first.shown()} "
                f"{_describe(first.settings)}; one loaded base serves every adapter, so they must "
                "be loaded alike. Serve them separately, or give every run the same quantize and "
                "dtype (each then answers as FineTuner(run, quantize=..., dtype=...) does).")
    plain = [p for p in planned if not p.is_adapter]
    if len(plain) > 1:
        raise ConfigError(f"{where}: the base is given twice ({plain[0].shown()} and "
                          f"{plain[1].shown()}); give it once.")
    if plain and base_name is not None:
        raise ConfigError(f"{where}: the base is named twice ({plain[0].shown()} and "
                          f"base_name={base_name!r}); give one.")
    if not plain and base_name is None:
        base_name = default_name(base)
        if base_name in names:
            raise ConfigError(f"{where}: the base {base!r} would be named {base_name!r}, the name "
                              f"of {names[base_name]!r} too; give the base a name: base_name=... "
                              "(`finetune serve`: --model_id NAME=<base model>).")
    return planned, base_name


def _load_kind(settings) -> tuple:
    q = settings.quantization_config
    return settings.bits, (None if q is None else q.to_dict()), str(settings.dtype)


def _describe(settings) -> str:
    q = settings.quantization_config
    dtype = str(settings.dtype).replace("torch.", "")
    if q is None:
        return f"unquantized in {dtype}"
    kind = f"4-bit ({q.bnb_4bit_quant_type})" if settings.bits == 4 else "8-bit"
    return f"in {kind}, other weights in {dtype}"
