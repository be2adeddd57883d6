"""The machine a run trains on: what it is, how much memory a run may use, and its probes,
cached on disk so a second run does not measure them again.

* `machine_key(device)`: the CPU model, torch version, torch thread count and the device (the
  GPU's name on CUDA). A probe measured under one key is reused only under the same key.
* `cached_probe(name, device, measure)`: `measure()`'s value, kept in
  `<cache>/machine.json` (`cache_dir()` of `model/embedded.py`: `$FINETUNING_SUITE_CACHE`, else
  `$XDG_CACHE_HOME/finetuning_suite`, else `~/.cache/finetuning_suite`). The matmul peak of the
  meter (`meter._cached_peak`) and the estimate's calibrations (`train/estimate.py`) live there.
* `memory_available(device)`: bytes a run in this process may hold at its peak: on CUDA the
  device's free memory (`torch.cuda.mem_get_info`) plus what this process's allocator already
  holds; on a CPU `MemAvailable` of /proc/meminfo (capped by a cgroup memory limit) plus this
  process's resident memory (the run's weights are already part of it).

The file is read and written whole (a write goes through a temporary file renamed into place);
two processes probing at once can lose one of the two entries, never corrupt the file. Of each
kind of entry (`matmul_peak/...`, `calibration/...`) the newest `KEEP_PER_KIND` are kept.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import platform
from pathlib import Path
from typing import Any, Callable

logger = logging.getLogger(__name__)

CACHE_FILE = "machine.json"
_VERSION = 1
KEEP_PER_KIND = 64  # entries of one kind (the name before its first "/") kept per machine, newest


def cache_file() -> Path:
    from ..model.embedded import cache_dir

    return cache_dir() / CACHE_FILE


def _cpuinfo_field(*names: str) -> str | None:
    """The first /proc/cpuinfo line's value whose key starts with one of `names`, or None."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith(names):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=None)
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo, else `platform.processor()`)."""
    return _cpuinfo_field("model name", "hardware", "cpu model") or platform.processor() \
        or platform.machine() or "unknown"


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (/proc/cpuinfo; empty where it cannot be read)."""
    return frozenset((_cpuinfo_field("flags") or "").split())


def device_name(device: str) -> str:
    """"cpu", or the accelerator's name ("cuda: NVIDIA H200")."""
    import torch

    device = str(device)
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(torch.device(device))}"
    return device.split(":")[0]


def machine_key(device: str = "cpu") -> dict[str, Any]:
    import torch

    return {"cpu": cpu_model(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "device": device_name(device)}


def _read() -> dict:
    try:
        data = json.loads(cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"version": _VERSION, "machines": {}}
    if not isinstance(data, dict) or data.get("version") != _VERSION or not isinstance(data.get("machines"), dict):
        return {"version": _VERSION, "machines": {}}
    return data


def _entry(data: dict, device: str) -> dict:
    key = machine_key(device)
    return data["machines"].setdefault(json.dumps(key, sort_keys=True), {"machine": key, "probes": {}})


def cached_value(name: str, device: str = "cpu"):
    """The cached value of probe `name` on this machine, or None."""
    return _read()["machines"].get(json.dumps(machine_key(device), sort_keys=True), {}).get("probes", {}).get(name)


def store_value(name: str, device: str, value) -> None:
    """Keep `value` as probe `name` of this machine (a failure to write is logged, not raised)."""
    from .runinfo import write_json_atomic

    data = _read()
    probes = _entry(data, device)["probes"]
    probes.pop(name, None)
    probes[name] = value  # newest last
    kind = name.split("/", 1)[0] + "/"
    same = [k for k in probes if k.startswith(kind)]
    for old in same[:max(0, len(same) - KEEP_PER_KIND)]:
        del probes[old]
    try:
        write_json_atomic(cache_file(), data)
    except OSError as exc:
        logger.info("Could not write the machine cache %s (%s); the probe will run again next time.",
                    cache_file(), exc)


def cached_probe(name: str, device: str, measure: Callable[[], Any]):
    """Probe `name`'s value for this machine: from the cache, else `measure()` (then cached;
    a None result is not kept)."""
    value = cached_value(name, device)
    if value is not None:
        return value
    value = measure()
    if value is not None:
        store_value(name, device, value)
    return value


# -- memory -------------------------------------------------------------------------------------
def _meminfo() -> dict[str, int]:
    out = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                out[name] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    except (OSError, ValueError):
        pass
    return out


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup memory limit (v2, else v1), or None without one."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 1 << 60:
            return None
        return max(0, int(limit) - usage)
    return None


def process_rss() -> int:
    """This process's resident memory in bytes (0 where it cannot be read)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def system_memory_available() -> int:
    """Bytes the system can give a process now (MemAvailable, under a cgroup limit)."""
    info = _meminfo()
    free = info.get("MemAvailable")
    if free is None:
        try:  # no /proc/meminfo (macOS, ...): the physical memory is the best bound known
            free = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            free = 0
    room = _cgroup_room()
    return min(free, room) if room is not None else free


def memory_available(device: str = "cpu") -> int:
    """Bytes a training run in this process may use at its peak, counting what it holds already
    (see the module docstring)."""
    import torch

    device = str(device)
    if device.startswith("cuda") and torch.cuda.is_available():
        dev = torch.device(device)
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free + torch.cuda.memory_reserved(dev))
    if device.startswith("mps") and hasattr(torch, "mps"):
        try:
            return int(torch.mps.recommended_max_memory())
        except Exception:  # noqa: BLE001
            pass
    return int(system_memory_available() + process_rss())
