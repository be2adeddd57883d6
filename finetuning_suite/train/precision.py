"""Which precision a run trains in when the user does not say: `bf16` and `fp16` are "auto"
unless given (True/False; "auto" or leaving them out means chosen here).

* CUDA: bf16 mixed precision where the card supports it (`torch.cuda.is_bf16_supported`),
  else fp16 mixed precision (with the Trainer's loss scaling).
* CPU: bf16 autocast where the CPU has native bf16 instructions (the `avx512_bf16` or
  `amx_bf16` flags) and the matmul peaks the MFU meter probes (`meter._cached_peak`) show bf16
  at least `CPU_BF16_MIN_SPEEDUP` times as fast as fp32; else fp32. Without those flags bf16 is
  emulated and slower, so nothing is timed. The probes (about a second each) run once per
  machine and are cached (`train/machine.py`).
* Anything else (MPS, ...): fp32.

The weights stay fp32 (the master copy); autocast runs the matmuls in half precision. The
choice, and why, is one `Precision`: logged once by the trainer config and kept in the run
record. `bench/speed.py` measures what bf16 gains on whole training runs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..config.values import is_auto_precision
from .machine import cpu_flags

CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
CPU_BF16_MIN_SPEEDUP = 1.2  # below this, casting to and from bf16 eats what the matmul gains
PROBE_NAME = "precision/cpu_bf16_matmul_speedup"


@dataclass(frozen=True)
class Precision:
    bf16: bool
    fp16: bool
    chosen: str  # "auto" (chosen here) or "given" (an explicit bf16/fp16 value)
    reason: str

    @property
    def name(self) -> str:
        return "bf16 mixed precision" if self.bf16 else "fp16 mixed precision" if self.fp16 else "fp32"

    def line(self) -> str:
        return f"Precision: {self.name} ({self.reason})."

    def to_dict(self) -> dict:
        return asdict(self)


def short_label(recorded: dict | None) -> str:
    """"bf16 (auto)", "fp32 (given)", ... from a run record's "precision"; a record without one
    was trained before the precision was chosen here, in fp32."""
    if not recorded:
        return "fp32"
    name = "bf16" if recorded.get("bf16") else "fp16" if recorded.get("fp16") else "fp32"
    return f"{name} ({recorded.get('chosen')})"


def measure_cpu_bf16_speedup() -> float | None:
    """The bf16 matmul peak over the fp32 one, as the MFU meter probes them
    (`meter._cached_peak`: cached per machine, so the run's MFU reuses them); None when a probe
    failed."""
    import torch

    from .meter import _cached_peak

    fp32, bf16 = _cached_peak(torch.float32, "cpu"), _cached_peak(torch.bfloat16, "cpu")
    return round(bf16 / fp32, 2) if fp32 and bf16 else None


def cpu_bf16_speedup() -> float:
    from .machine import cached_probe

    return cached_probe(PROBE_NAME, "cpu", measure_cpu_bf16_speedup)


def given_value(name: str, value) -> bool | None:
    """An explicit bf16/fp16 value, or None for "auto" (left out, None or the string "auto")."""
    return None if is_auto_precision(name, value) else value


def choose(device: str, bf16=None, fp16=None) -> Precision:
    """The run's precision: explicit `bf16` / `fp16` values win; what is left is chosen for
    `device` as the module docstring says."""
    bf16, fp16 = given_value("bf16", bf16), given_value("fp16", fp16)
    if bf16 is not None or fp16 is not None:
        return Precision(bool(bf16), bool(fp16), "given",
                         "given: " + ", ".join(f"{n}={v}" for n, v in (("bf16", bf16), ("fp16", fp16))
                                               if v is not None))
    device = str(device)
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_bf16_supported():
            return Precision(True, False, "auto", "chosen automatically: this CUDA card supports bf16")
        return Precision(False, True, "auto", "chosen automatically: this CUDA card has no bf16; "
                         "fp16 with loss scaling. Pass fp16=False for fp32")
    if device != "cpu":
        return Precision(False, False, "auto", f"chosen automatically: fp32 on {device}")
    native = [f for f in CPU_BF16_FLAGS if f in cpu_flags()]
    if not native:
        return Precision(False, False, "auto", "chosen automatically: this CPU has no native bf16 "
                         "(no avx512_bf16 or amx_bf16 flag), where bf16 runs slower than fp32")
    speedup = cpu_bf16_speedup()
    if speedup is None:
        return Precision(False, False, "auto", "chosen automatically: the bf16 matmul probe failed; "
                         "pass bf16=True to use it anyway")
    if speedup < CPU_BF16_MIN_SPEEDUP:
        return Precision(False, False, "auto", f"chosen automatically: this CPU has {'/'.join(native)}, "
                         f"but a bf16 matmul ran only {speedup}x as fast as fp32 (cached probe); "
                         "pass bf16=True to use it anyway")
    return Precision(True, False, "auto", f"chosen automatically: this CPU has {'/'.join(native)} and a "
                     f"bf16 matmul ran {speedup}x as fast as fp32 (probed once, cached); "
                     "pass bf16=False for fp32")
