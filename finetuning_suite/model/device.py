"""Device and dtype: names checked without touching the machine (`device_problem`,
`dtype_problem`, used by the config's validation), then resolved on it (`resolve_device`).

The spec's default device is CUDA when available; we also try Apple's MPS before the CPU."""
from __future__ import annotations

import re

from ..errors import ConfigError, DeviceError

_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")
DEVICE_HINT = "use 'cpu', 'cuda', 'cuda:N', 'mps' or leave it empty (auto)"

_DTYPE_ALIASES = {
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "float32": "float32", "fp32": "float32", "float": "float32",
}


def device_problem(device) -> str | None:
    """What is wrong with a device name, or None ('cpu', 'cuda', 'cuda:1', 'mps' are names)."""
    import torch

    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str) or not _DEVICE.match(device.strip().lower()):
        return f"is not a device this package runs on; {DEVICE_HINT}."
    return None


def dtype_problem(value) -> str | None:
    import torch

    if isinstance(value, torch.dtype) or (isinstance(value, str)
                                          and value.lower().removeprefix("torch.") in _DTYPE_ALIASES):
        return None
    return f"is not a dtype; use a torch dtype or one of {sorted(_DTYPE_ALIASES)}."


def default_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def resolve_device(device) -> str:
    """Check that `device` exists here and return it as a string ("cpu", "cuda", "cuda:1", "mps")."""
    import torch

    if device is None:
        return default_device()
    issue = device_problem(device)
    if issue:
        raise ConfigError(f"device={device!r} {issue}")
    dev = torch.device(str(device).strip().lower())
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device={device!r} was asked for, but CUDA is not available on this machine. "
                "Pass device='cpu', or device=None to pick the best device available."
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                f"numbered 0..{torch.cuda.device_count() - 1}."
            )
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None)
                                    and torch.backends.mps.is_available()):
        raise DeviceError(
            f"device={device!r} was asked for, but Apple MPS is not available here. "
            "Pass device='cpu', or device=None to pick the best device available."
        )
    return str(dev)


def default_dtype(device: str):
    """fp32 on CPU and MPS; bf16 on CUDA when the card supports it, else fp16."""
    import torch

    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def parse_dtype(value, name: str):
    """A torch dtype from a dtype or a name like "bfloat16", "torch.float16" or "fp32"."""
    import torch

    issue = dtype_problem(value)
    if issue:
        raise ConfigError(f"{name}={value!r} {issue}")
    if isinstance(value, torch.dtype):
        return value
    return getattr(torch, _DTYPE_ALIASES[value.lower().removeprefix("torch.")])
