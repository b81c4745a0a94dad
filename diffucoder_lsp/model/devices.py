"""Devices and dtypes: what "auto" means on this machine, and how a model too big for one GPU is spread out.

Why a module of its own: the loader, the doctor and the benchmarks must agree on these choices, and the doctor
must explain them without loading a model. The rules:

* device "auto" is CUDA, else Apple MPS, else the CPU; explicit names are checked against the hardware so a typo
  or a CPU-only torch build fails with a one-line reason instead of a deep torch traceback.
* dtype "auto" is bf16 where the hardware computes it natively (GPUs with bf16, CPUs with AVX512-BF16 / AMX /
  Arm BF16) and fp32 elsewhere: emulated bf16 is slower than fp32 on a CPU, but native bf16 halves a 7B model's
  15 GB more-or-less for free.
* Multi-GPU: when the weights do not fit in the chosen GPU's free memory (or ``device_map="auto"`` is asked for),
  accelerate's ``infer_auto_device_map`` places whole ``DecoderLayer``s (a residual block must not be split) on
  the GPUs and then the CPU, and ``dispatch_model`` adds hooks that move activations between them. accelerate is
  imported only on that path, never for CPU loads.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from typing import Any

import torch

from ..errors import BadInputError
from .config import ModelConfig
from .network import DreamModel

log = logging.getLogger(__name__)

__all__ = [
    "resolve_device",
    "resolve_dtype",
    "auto_dtype",
    "cpu_bf16_support",
    "as_device",
    "plan_device_map",
    "placement",
    "dispatch",
]

_DEVICE_NAME = re.compile(r"^(cpu|cuda|mps)(:(\d+))?$")
_DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """ "auto" picks cuda, then mps, then cpu; explicit names are validated against what this machine has."""
    name = str(device if device is not None else "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    match = _DEVICE_NAME.match(name)
    if not match:
        raise BadInputError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps")
    kind, index = match.group(1), match.group(3)
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "mps":
        if not _mps_available():
            raise BadInputError("device 'mps' was requested but Apple MPS is not available on this machine")
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise BadInputError(
            f"device {name!r} was requested but CUDA is not available (torch {torch.__version__}); use --device cpu"
        )
    idx = int(index) if index is not None else torch.cuda.current_device()
    if idx >= torch.cuda.device_count():
        raise BadInputError(
            f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)"
        )
    return torch.device("cuda", idx)


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def cpu_bf16_support() -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX on x86, the BF16 extension on Arm).

    Without native support bf16 matmuls are emulated and slower than fp32, so "auto" then keeps fp32.
    """
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    flags.update(value.split())
    except OSError:
        return False, "cannot read /proc/cpuinfo; assuming no native bf16"
    found = sorted(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    if not found:
        return False, "no avx512_bf16/amx_bf16/bf16 CPU flag: bf16 would be emulated"
    if "bf16" not in found and not torch.backends.mkldnn.is_available():
        return False, f"CPU has {', '.join(found)} but this torch build lacks oneDNN"
    return True, f"CPU has {', '.join(found)}"


def auto_dtype(device: torch.device) -> tuple[torch.dtype, str]:
    """The dtype "auto" picks on ``device`` and why."""
    if device.type == "cuda":
        try:
            ok = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # older torch
            ok = torch.cuda.is_bf16_supported()
        if ok:
            return torch.bfloat16, "the GPU supports bf16"
        return torch.float32, "the GPU lacks native bf16 (pass --dtype fp16 to halve memory)"
    if device.type == "cpu":
        ok, why = cpu_bf16_support()
        return (torch.bfloat16, why) if ok else (torch.float32, why)
    return torch.float32, f"fp32 is the safe default on {device.type}"


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in set(_DTYPES.values()):
            raise BadInputError(f"unsupported dtype {dtype}: use bf16, fp16 or fp32")
        return dtype
    name = str(dtype if dtype is not None else "auto").strip().lower().removeprefix("torch.")
    if name == "auto":
        return auto_dtype(device)[0]
    if name not in _DTYPES:
        raise BadInputError(f"unknown dtype {dtype!r}: use auto, bf16, fp16 or fp32")
    chosen = _DTYPES[name]
    if chosen == torch.float16 and device.type == "cpu":
        log.warning("fp16 on CPU is slow and overflow-prone; bf16 or fp32 are better choices there")
    return chosen


# ------------------------------------------------------------------------------------------- multi-device


def as_device(value: Any) -> torch.device:
    if isinstance(value, int):
        return torch.device("cuda", value)
    return torch.device(value)


def plan_device_map(
    model: DreamModel, cfg: ModelConfig, device: torch.device, dtype: torch.dtype, device_map: Any, quant: str
) -> dict[str, Any] | None:
    """A module -> device map when the model must be spread over several devices, else None."""
    if device_map is None:
        if device.type != "cuda" or quant != "none":
            return None
        need = cfg.num_parameters * torch.empty((), dtype=dtype).element_size()
        free, _total = torch.cuda.mem_get_info(device)
        if need < 0.9 * free:  # keep ~10% for activations
            return None
        log.warning(
            "the model needs ~%.1f GiB but %s has %.1f GiB free: spreading layers over the available devices",
            need / 2**30,
            device,
            free / 2**30,
        )
        device_map = "auto"
    if quant != "none":
        raise BadInputError(
            "device_map cannot be combined with quantization: a quantized model loads onto one device"
        )
    if device_map == "auto":
        if device.type != "cuda":
            raise BadInputError("device_map='auto' spreads a model over CUDA GPUs; it needs --device cuda")
        try:
            from accelerate import infer_auto_device_map
        except ImportError as exc:
            raise BadInputError(
                "spreading a model over devices needs accelerate: pip install accelerate"
            ) from exc
        device_map = infer_auto_device_map(model, no_split_module_classes=["DecoderLayer"], dtype=dtype)
    if not isinstance(device_map, dict) or not device_map:
        raise BadInputError(f"device_map must be None, 'auto' or a module -> device dict, not {device_map!r}")
    if "disk" in device_map.values():
        raise BadInputError(
            "the model does not fit in GPU + CPU memory (accelerate wanted to offload to disk): try --quant 4bit"
        )
    return dict(device_map)


def placement(device_map: dict[str, Any]) -> Callable[[str], torch.device]:
    def place(key: str) -> torch.device:
        best = None
        for name in device_map:
            if (name == "" or key == name or key.startswith(name + ".")) and (
                best is None or len(name) > len(best)
            ):
                best = name
        if best is None:
            raise BadInputError(f"device_map does not place {key}")
        return as_device(device_map[best])

    return place


def dispatch(model: DreamModel, device_map: dict[str, Any]) -> torch.device:
    """Attach accelerate's hooks so activations follow the layers across devices; returns the input device.

    ``model(...)`` / ``denoise_logits`` return their output on the input device (accelerate's top-level hook);
    a direct ``hidden_states`` call returns it on the device of the final norm.
    """
    from accelerate import dispatch_model

    gpus = sorted({as_device(v).index or 0 for v in device_map.values() if as_device(v).type == "cuda"})
    if not gpus:  # an explicit all-CPU map: nothing to dispatch
        return torch.device("cpu")
    dispatch_model(model, device_map=device_map, main_device=gpus[0])
    return torch.device("cuda", gpus[0])


def tune_cpu_runtime(flush_denormals: bool = False) -> None:
    """CPU inference settings: keep torch's thread count at the machine's core count (a parent process's
    setting must not leak in) and, when asked, flush denormals (tiny activations otherwise take the slow
    subnormal path). Flushing changes the floating-point mode of the calling thread for everything else that
    runs on it, so only the command-line entry points ask for it, never a library caller."""
    if flush_denormals:
        torch.set_flush_denormal(True)
    cores = os.cpu_count() or 1
    if torch.get_num_threads() > cores:
        torch.set_num_threads(cores)
