"""Find and load a model and its tokenizer.

`model_id` may be:
- `None`: the embedded SmolLM2-135M-Instruct (see `embedded.py`), or the folder named by
  `$FINETUNING_SUITE_DEFAULT_MODEL` when that is set;
- a local model folder (with `config.json`);
- a `.gguf` file (converted once to a cached safetensors folder, see `embedded.py`);
- a folder written by `FineTuner.train` or any PEFT adapter folder (`adapter_config.json`):
  its base model is loaded and the adapter put on top;
- a Hugging Face hub id, read from the local HF cache (nothing is downloaded when
  `HF_HUB_OFFLINE=1`).

A name that can only be a local path is never looked up on the hub: one that starts with `.`,
`/` or `~`, ends in `.gguf`, has more than one `/`, or whose first folder exists here (`models/x`
when `models/` does). When it does not exist the error says so, with a did-you-mean among the
files beside it. Only a name of the form `owner/name` (or `name`) that is none of these goes
to the hub.
"""
from __future__ import annotations

import difflib
import json
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from .embedded import EMBEDDED_MODEL_NAME, converted_gguf_dir, embedded_model_dir
from .facts import is_encoder_decoder
from ..errors import ModelLoadError
from .quantization import keep_cpu_4bit_weights_trainable
from .run_folder import RUN_CONFIG_FILE, RUN_YAML_FILE, check_complete  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)

EMBEDDED_SOURCE = f"embedded:{EMBEDDED_MODEL_NAME}"


@dataclass
class ModelSource:
    """Where the base model comes from, and the adapter to put on it, if any."""

    source: str  # what to record in a run's config: a hub id, a path, or EMBEDDED_SOURCE
    path: str  # what from_pretrained reads
    adapter_path: str | None = None


# A model folder to use instead of the embedded one when model_id is empty (the docs test points
# it at a tiny model; a user may point it at their own default).
DEFAULT_MODEL_ENV = "FINETUNING_SUITE_DEFAULT_MODEL"


def resolve_model_source(model_id: str | os.PathLike | None, adapter_path=None) -> ModelSource:
    if model_id is None and os.environ.get(DEFAULT_MODEL_ENV):
        return resolve_model_source(os.environ[DEFAULT_MODEL_ENV], adapter_path)
    if model_id is None or model_id == EMBEDDED_SOURCE:
        return ModelSource(EMBEDDED_SOURCE, str(embedded_model_dir()), _adapter(adapter_path))
    text = os.fspath(model_id)
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return ModelSource(str(path.resolve()), str(converted_gguf_dir(path)), _adapter(adapter_path))
        raise ModelLoadError(
            f"model_id={text!r} is a file but not a .gguf file; pass a model folder, a .gguf file "
            "or a hub id."
        )
    if path.is_dir():
        check_complete(path, text)
        if (path / "adapter_config.json").is_file():
            if adapter_path is not None:
                raise ModelLoadError(
                    f"model_id={text!r} is already an adapter folder; do not also pass adapter_path."
                )
            base = _adapter_base(path)
            resolved = resolve_model_source(base)
            return ModelSource(resolved.source, resolved.path, str(path.resolve()))
        if (path / "config.json").is_file():
            return ModelSource(str(path.resolve()), str(path.resolve()), _adapter(adapter_path))
        raise ModelLoadError(
            f"model_id={text!r} is a folder without config.json or adapter_config.json, so it is "
            "neither a model nor an adapter. Point at a model folder, a .gguf file, a folder "
            "written by FineTuner.train, or a hub id."
        )
    if _is_local_path(text):
        raise ModelLoadError(
            f"model_id={text!r}: no such file or folder.{_did_you_mean(path)} Check the path, or "
            f"pass model_id=None for the embedded {EMBEDDED_MODEL_NAME}."
        )
    return ModelSource(text, text, _adapter(adapter_path))


def _is_local_path(text: str) -> bool:
    """A model_id that can only mean a local path, so it is never sent to the hub (see the
    module docstring)."""
    parts = Path(text).parts
    return (text.startswith((".", "/", "~")) or text.count("/") > 1 or text.endswith(".gguf")
            or (len(parts) > 1 and Path(parts[0]).expanduser().is_dir()))


def _did_you_mean(path: Path) -> str:
    """" Did you mean '<sibling>'?" for a path that does not exist, or a note on its parent."""
    parent = path.expanduser().parent
    if not parent.is_dir():
        return f" Its folder {str(parent)!r} does not exist either."
    close = difflib.get_close_matches(path.name, [p.name for p in parent.iterdir()], n=1)
    return f" Did you mean {str(parent / close[0])!r}?" if close else ""


def read_json_file(path: Path, what: str) -> dict:
    """A JSON object from `path`, or a ModelLoadError naming the file, its folder and the fix."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problem = "could not be read" if isinstance(exc, OSError) else "is not valid JSON"
        raise ModelLoadError(
            f"{path.name} in {str(path.parent)!r} {problem}: {exc}. The {what} folder is "
            "damaged or was only partly copied: copy it again (or retrain), or fix the file."
        ) from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path.name} in {str(path.parent)!r} holds {type(data).__name__}, not "
                             f"a JSON object. The {what} folder is damaged: copy it again (or retrain).")
    return data


def _adapter(adapter_path) -> str | None:
    if adapter_path is None:
        return None
    path = Path(adapter_path).expanduser()
    if not (path / "adapter_config.json").is_file():
        problem = "holds no adapter_config.json." if path.exists() else \
            f"no such folder.{_did_you_mean(path)}"
        raise ModelLoadError(
            f"adapter_path={str(adapter_path)!r}: {problem} Pass a folder written by "
            "FineTuner.train or PeftModel.save_pretrained."
        )
    read_json_file(path / "adapter_config.json", "adapter")
    return str(path.resolve())


def _adapter_base(adapter_dir: Path) -> str | None:
    """The base model an adapter was trained on: our run config first (it knows the embedded
    model by name, not by a cache path of another machine), else PEFT's own record."""
    run_config = adapter_dir / RUN_CONFIG_FILE
    if run_config.is_file():
        source = (read_json_file(run_config, "run").get("model") or {}).get("source")
        if source:
            return source
    base = read_json_file(adapter_dir / "adapter_config.json", "adapter").get("base_model_name_or_path")
    if not base:
        raise ModelLoadError(
            f"The adapter in {str(adapter_dir)!r} does not name its base model; pass the base as "
            "model_id and the adapter folder as adapter_path."
        )
    return base


def _offline_hint(source: str) -> str:
    return (
        f"model_id={source!r} was not found locally. Without network access a hub model must "
        "already be in the Hugging Face cache. Ways out: pass a local model folder or .gguf file "
        f"as model_id, or model_id=None for the embedded {EMBEDDED_MODEL_NAME}."
    )


def load_config(src: ModelSource, trust_remote_code: bool = False):
    from transformers import AutoConfig

    folder = Path(src.path)
    if (folder / "config.json").is_file():  # a local folder: say what is wrong with it
        read_json_file(folder / "config.json", "model")
    try:
        return AutoConfig.from_pretrained(src.path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        if "trust_remote_code" in str(exc):
            raise ModelLoadError(
                f"model_id={src.source!r} needs custom code from its repository; pass "
                "trust_remote_code=True if you trust it."
            ) from exc
        if folder.is_dir():
            raise ModelLoadError(f"Could not read the model config in {src.path!r}: {exc}. Fix or "
                                 "replace its config.json (copy the model folder again).") from exc
        raise ModelLoadError(f"{_offline_hint(src.source)}\n(transformers said: {exc})") from exc


def load_tokenizer(src: ModelSource, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    # A trained output folder holds the tokenizer as trained (pad token, chat template): prefer it.
    where = src.path
    if src.adapter_path and (Path(src.adapter_path) / "tokenizer_config.json").is_file():
        where = src.adapter_path
    try:
        return AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - damaged files surface as KeyError, JSON and Rust errors
        if not Path(where).is_dir():
            raise ModelLoadError(f"Could not load a tokenizer for {src.source!r}: {exc}") from exc
        files = sorted(p.name for p in Path(where).glob("tokenizer*"))
        problem = f"its files {files} are damaged or incomplete" if files else \
            "it holds no tokenizer files"
        raise ModelLoadError(
            f"Could not load the tokenizer in {where!r} ({type(exc).__name__}: {exc}); {problem}. "
            "Copy the folder again, or save the tokenizer into it with tokenizer.save_pretrained."
        ) from exc


def ensure_pad_token(tokenizer) -> None:
    """Give the tokenizer a pad token, distinct from EOS where the vocabulary allows.

    When pad == eos, code that masks labels by `input_ids == pad_token_id` also masks every EOS
    and the model never learns to stop. Our labels are built per example before padding (and the
    collator pads labels with -100), so EOS stays trained either way; a distinct pad is still the
    safer default for any other code that touches these tensors.
    """
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    unk = tokenizer.unk_token
    if unk is not None and tokenizer.unk_token_id != tokenizer.eos_token_id:
        tokenizer.pad_token = unk
        logger.info("Using %r as the pad token (distinct from EOS %r).", unk, tokenizer.eos_token)
    elif tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError("The tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token.")
        tokenizer.pad_token = tokenizer.eos_token
        logger.info(
            "Tokenizer has no pad token and no spare special token: using EOS %r as pad. "
            "Labels are masked per example, so EOS is still trained.", tokenizer.eos_token,
        )


def model_class(config):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM if is_encoder_decoder(config) else AutoModelForCausalLM


def load_model(src: ModelSource, config, device: str, dtype: torch.dtype, quant_config=None,
               trust_remote_code: bool = False):
    """Load the base model onto `device`. A quantized model is placed with `device_map` (bitsandbytes
    weights cannot be moved with `.to()`)."""
    cls = model_class(config)
    kwargs = dict(dtype=dtype, trust_remote_code=trust_remote_code)
    if quant_config is not None:
        kwargs.update(quantization_config=quant_config, device_map={"": device})
    from safetensors import SafetensorError

    try:
        model = cls.from_pretrained(src.path, config=config, **kwargs)
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(unsafe_pickle_message(src.source, exc)) from exc
    except SafetensorError as exc:
        raise ModelLoadError(
            f"Could not load model {src.source!r}: {damaged_weights(src.path) or 'a weights file'} "
            f"is damaged or incomplete ({exc}). Copy or download the model again."
        ) from exc
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"Could not load model {src.source!r}: {exc}") from exc
    if quant_config is None:
        model.to(device)
    elif device == "cpu":
        keep_cpu_4bit_weights_trainable(model)
    return model


def unsafe_pickle_message(what: str, exc: BaseException) -> str:
    """torch refused a pickled weights file (`torch.load(weights_only=True)`): say so plainly."""
    return (f"{what}: its pickled weights (a .bin file) hold more than tensors, so torch refused to "
            f"load them (weights_only=True guards against code hidden in pickles: "
            f"{str(exc).split('. ')[0][:120]}). Use safetensors weights (model.safetensors / "
            "adapter_model.safetensors) from a source you trust, or convert the file where you "
            "trust it.")


def damaged_weights(folder) -> str | None:
    """The .safetensors files in `folder` whose header cannot be read, as 'x in <folder>'."""
    from safetensors import safe_open

    folder = Path(folder)
    bad = []
    for file in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except Exception:  # noqa: BLE001 - any failure to open means damaged
            bad.append(file.name)
    return f"{', '.join(bad)} in {str(folder)!r}" if bad else None


def load_run_tokenizer(src: ModelSource, trust_remote_code: bool = False):
    """The tokenizer as `load_pretrained` prepares it (the run folder's own when it has one, a pad
    token, right padding), alone: for a run whose adapter goes on a base already loaded."""
    tokenizer = load_tokenizer(src, trust_remote_code)
    ensure_pad_token(tokenizer)
    tokenizer.padding_side = "right"
    return tokenizer


def load_pretrained(src: ModelSource, device: str, dtype: torch.dtype, quant_config=None,
                    trust_remote_code: bool = False):
    """(model, tokenizer), ready for training and generation: a pad token distinct from EOS
    where possible, its id on the model and generation configs, and right padding for training
    (left padding would shift Llama-style position ids between training and generation; batched
    generation pads on the left per call)."""
    config = load_config(src, trust_remote_code)
    tokenizer = load_run_tokenizer(src, trust_remote_code)
    model = load_model(src, config, device, dtype, quant_config, trust_remote_code)
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def saved_settings(model_id) -> dict:
    """The flat configuration a run folder was trained with (its `config.yaml`), or {} for
    anything else. Reloading a run applies them, so it generates as it was trained."""
    import yaml

    if model_id is None:
        return {}
    path = Path(os.fspath(model_id)).expanduser() / RUN_YAML_FILE
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ModelLoadError(f"{str(path)!r} is not readable YAML ({exc}); the run folder is "
                             "damaged: retrain, or delete config.yaml to load without its settings.") from exc
    return data if isinstance(data, dict) else {}
