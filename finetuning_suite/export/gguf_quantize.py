"""The k-quants (Q4_K_M, Q5_K_M, Q6_K) through llama.cpp's own quantizer, from an F16 GGUF file
of our writer.

Why llama.cpp's and not ours: the k-quant formats (super-blocks of 256 weights, per-tensor type
choices such as Q6_K for the output and some feed-forward matrices in Q4_K_M) are defined by
llama.cpp's C code; `gguf.quants` has no k-quant encoder, and a copy would drift. llama-cpp-python
(the `gguf` extra, `pip install 'finetuning_suite[gguf]'`) exposes that quantizer as
`llama_cpp.llama_model_quantize(src, dst, params)` with the defaults of
`llama_model_quantize_default_params()`.

It runs in a child Python process: the quantizer is native code, and a llama-cpp-python built
for another CPU dies with an illegal instruction (SIGILL), which would take the caller with it.
Here it becomes a `RuntimeError` naming the portable build that fixes it.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

# our name -> llama.cpp's ftype constant (llama_cpp.LLAMA_FTYPE_*)
LLAMA_CPP_TYPES = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
                   "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K"}

INSTALL_HINT = ("pip install 'finetuning_suite[gguf]' (it builds llama-cpp-python; "
                "CMAKE_ARGS=\"-DGGML_NATIVE=OFF\" makes the build portable)")

_CHILD = r"""
import ctypes, sys
import llama_cpp
src, dst, ftype, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, ftype)
params.nthread = threads
sys.exit(llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)))
"""


def llama_cpp_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def quantize(src: Path, dst: Path, qtype: str, threads: int | None = None) -> Path:
    """Write `dst`, the GGUF file `src` quantized to `qtype` (a key of LLAMA_CPP_TYPES)."""
    if qtype not in LLAMA_CPP_TYPES:
        raise ValueError(f"qtype={qtype!r}: llama.cpp quantizes to {list(LLAMA_CPP_TYPES)} here")
    if not llama_cpp_installed():
        raise RuntimeError(f"gguf={qtype!r} needs llama.cpp's quantizer: {INSTALL_HINT}.")
    threads = threads or max(1, min(8, os.cpu_count() or 1))
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(src), str(dst), LLAMA_CPP_TYPES[qtype],
                           str(threads)], capture_output=True, text=True)
    if proc.returncode < 0 and -proc.returncode == signal.SIGILL:
        raise RuntimeError("llama.cpp's quantizer died with an illegal instruction: this "
                           "llama-cpp-python was built for another CPU. Rebuild it portable: "
                           "CMAKE_ARGS=\"-DGGML_NATIVE=OFF\" pip install --force-reinstall "
                           "--no-cache-dir llama-cpp-python")
    if proc.returncode != 0 or not Path(dst).is_file():
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-5:]
        raise RuntimeError(f"llama.cpp's quantizer failed on {src} -> {qtype} (exit "
                           f"{proc.returncode}): {' | '.join(tail)}")
    return Path(dst)
