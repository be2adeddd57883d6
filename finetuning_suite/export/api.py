"""`export_model`: the one entry point of the export (what `FineTuner.export` and `finetune
export` call).

    export_model(ft, "out/merged")                  # plain transformers folder, adapter merged
    export_model(ft, "out/merged", gguf="q8_0")     # + out/merged/gguf/merged-q8_0.gguf, Modelfile
    export_model(ft, "out/adapter", merged=False)   # the PEFT adapter folder alone

Every argument is checked before anything is loaded or written; all problems are reported
together in one `ConfigError`. The folder is written under a temporary sibling name and renamed
into place (`atomic.staged_folder`), so `path` never holds a partial export.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from ..errors import ConfigError, Problems
from .atomic import is_empty_dir, staged_folder
from .gguf_file import support_problems, write_gguf
from .gguf_quantize import INSTALL_HINT, LLAMA_CPP_TYPES, llama_cpp_installed, quantize
from .merged import export_tokenizer, has_adapter, merged_model, save_merged

logger = logging.getLogger(__name__)

GGUF_SUBFOLDER = "gguf"  # the GGUF file and its Modelfile, inside the export folder
# What `gguf=` accepts: written by our writer (f16, bf16, q8_0), or made by llama.cpp's quantizer
# from our F16 file (the k-quants; needs the `gguf` extra).
GGUF_TYPES = ("f16", "bf16", "q8_0", *LLAMA_CPP_TYPES)
_GGUF_HELP = ("f16/bf16: 16-bit floats; q8_0: 8-bit blocks, about half the size; q6_k, q5_k_m, "
              "q4_k_m: llama.cpp's k-quants, about 6.6, 5.7 and 4.9 bits per weight")


def export_model(ft, path, *, merged: bool = True, gguf: str | None = None,
                 overwrite: bool = False) -> dict[str, str]:
    """Write the model of FineTuner `ft` into the folder `path`; return what was written.

    merged=True: a plain transformers model folder (safetensors, config, generation config,
        tokenizer with the training chat template): `AutoModelForCausalLM.from_pretrained(path)`
        (or `AutoModelForSeq2SeqLM`, `transformers.pipeline`) loads it without this package
        and generates greedily what `ft.generate` does. A LoRA adapter is merged into a freshly
        loaded float32 copy of the base (a 4-bit/8-bit base gets its dequantized weights);
        `ft` is unchanged.
    merged=False: the PEFT adapter folder with the tokenizer (`peft.PeftModel.from_pretrained(
        base, path)`; `FineTuner(model_id=path)` reloads it with its settings). Not for
        method='full', which has no adapter.
    gguf= one of GGUF_TYPES (with merged=True; Llama, Mistral, Qwen2/3, Gemma 2/3 and Phi-3
        models, `gguf_arch`): also `gguf/<name>-<type>.gguf` (llama.cpp, Ollama, LM Studio) with
        an Ollama `gguf/Modelfile` beside it. f16, bf16 and q8_0 are written by this package;
        q4_k_m, q5_k_m and q6_k by llama.cpp's quantizer from a temporary F16 file (the `gguf`
        extra: llama-cpp-python).
    overwrite: replace an existing non-empty `path` entirely (never mixed with the old files).

    Returns {"folder": ..., and per kind "model", "config", "tokenizer" | "adapter",
    "adapter_config", "tokenizer" | "gguf", "modelfile"}: paths as strings.
    """
    folder, qtype = check_export(ft, path, merged=merged, gguf=gguf, overwrite=overwrite)
    written: dict[str, Path] = {}
    with staged_folder(folder) as tmp:
        if merged:
            model = merged_model(ft)
            written.update(save_merged(ft, model, tmp))
            if qtype is not None:
                written.update(_write_gguf_and_modelfile(ft, model, tmp, folder.name, qtype))
            del model
        else:
            from .adapter import save_adapter

            written.update(save_adapter(ft, tmp))
    result = {"folder": str(folder)}
    result.update({key: str(folder / p.relative_to(tmp)) for key, p in written.items()})
    logger.info("Exported %s to %s", "merged model" if merged else "adapter", folder)
    return result


def _write_gguf_and_modelfile(ft, model, tmp: Path, name: str, qtype: str) -> dict[str, Path]:
    from .modelfile import modelfile_text

    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"
    # A folder of its own: transformers reading `gguf_file=` from a folder that also holds
    # tokenizer files mixes the two (no chat template, no special tokens); Ollama's FROM is
    # relative to the Modelfile.
    gguf_dir = tmp / GGUF_SUBFOLDER
    gguf_dir.mkdir()
    file = gguf_dir / f"{stem}-{qtype}.gguf"
    tokenizer = export_tokenizer(ft)
    if qtype in LLAMA_CPP_TYPES:
        f16 = gguf_dir / f".{stem}-f16.tmp.gguf"
        try:
            write_gguf(model, tokenizer, tmp, f16, "f16", name=stem)
            quantize(f16, file, qtype)
        finally:
            f16.unlink(missing_ok=True)
    else:
        write_gguf(model, tokenizer, tmp, file, qtype, name=stem)
    stops = [tokenizer.eos_token] if tokenizer.eos_token else []
    greedy = not getattr(ft.inference_handler, "do_sample", False)
    modelfile = gguf_dir / "Modelfile"
    modelfile.write_text(modelfile_text(tokenizer, file.name, stop_tokens=stops, greedy=greedy),
                         encoding="utf-8")
    return {"gguf": file, "modelfile": modelfile}


def _inside(a: Path, b: Path) -> bool:
    """True when `a` is `b` or inside it."""
    return a == b or b in a.parents


def _check_arguments(problems: Problems, path, merged, gguf, overwrite) -> tuple[Path | None, str | None]:
    """The checks that need no model: the folder, the flags, the GGUF type."""
    folder = None
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        problems.add("path", path, "must be the folder to write, e.g. 'out/merged'.")
    else:
        folder = Path(os.fspath(path)).expanduser().resolve()
        if folder.exists() and not folder.is_dir():
            problems.add("path", os.fspath(path), "is an existing file; pass a folder path "
                         "(it is created), e.g. 'out/merged'.")
        elif folder.is_dir() and not is_empty_dir(folder) and overwrite is not True:
            problems.add("path", os.fspath(path), "is a folder that already holds files; pass "
                         "overwrite=True (--overwrite) to replace it entirely, or a new folder.")
    for name, value in (("merged", merged), ("overwrite", overwrite)):
        if not isinstance(value, bool):
            problems.add(name, value, "must be True or False.")
    qtype = None
    if gguf is not None:
        if isinstance(gguf, str) and gguf.strip().lower() in GGUF_TYPES:
            qtype = gguf.strip().lower()
            if qtype in LLAMA_CPP_TYPES and not llama_cpp_installed():
                problems.add("gguf", gguf, "is made by llama.cpp's quantizer, which is not "
                             f"installed: {INSTALL_HINT}; f16, bf16 and q8_0 need nothing more.")
        else:
            problems.add("gguf", gguf, f"must be one of {list(GGUF_TYPES)} ({_GGUF_HELP}) or "
                         "None for no GGUF file.")
        if merged is False:
            problems.add("gguf", gguf, "a GGUF file holds merged weights; pass merged=True "
                         "with gguf, or gguf=None to export the adapter alone.")
    return folder, qtype


def check_export_arguments(path, *, merged: bool = True, gguf: str | None = None,
                           overwrite: bool = False) -> None:
    """Raise ConfigError for arguments that are wrong whatever the model (checked before a
    model is loaded, e.g. by `finetune export`)."""
    problems = Problems("export")
    _check_arguments(problems, path, merged, gguf, overwrite)
    problems.raise_if_any()


def check_export(ft, path, *, merged, gguf, overwrite) -> tuple[Path, str | None]:
    """(the export folder, the GGUF type or None), or one ConfigError listing every problem."""
    problems = Problems("export")
    folder, qtype = _check_arguments(problems, path, merged, gguf, overwrite)
    if folder is not None:
        for what, where in (("base model", getattr(ft.source, "path", None)),
                            ("adapter", getattr(ft.source, "adapter_path", None))):
            if where and Path(where).exists():
                where = Path(where).resolve()
                if _inside(where, folder):  # replacing `folder` would delete the source
                    problems.add("path", os.fspath(path), f"holds the {what} this model was "
                                 f"loaded from ({where}); export to another folder.")
    if merged is False and not has_adapter(ft.model):
        problems.add("merged", merged, "this model was fully fine-tuned (method='full'): it "
                     "has no adapter to export alone; use merged=True to write the model.")
    if qtype is not None and merged is not False:
        for name, value, fix in support_problems(ft.model.config, ft.tokenizer):
            problems.add(name, value, fix)
    problems.raise_if_any()
    if folder is None:  # unreachable: raise_if_any raised
        raise ConfigError("export: no path")
    return folder, qtype
