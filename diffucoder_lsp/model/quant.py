"""8-bit and 4-bit weights for the transformer layers, through bitsandbytes, on CPU as well as CUDA.

Why: DiffuCoder-7B is ~15 GB in bf16. LLM.int8() halves that and NF4 quarters it, which is what lets a laptop or a
small GPU run it. Only the linears inside the decoder layers (q/k/v/o and gate/up/down, ~85% of the weights) are
quantized; the embeddings and the LM head stay in full precision because the logits feed the sampler's
confidence scores directly, and quantizing them costs most of the quality for little memory.

Weights are quantized from the loaded bf16/fp32 tensors: ``load_model`` reads the checkpoint on the CPU, then
:func:`quantize_model` swaps each linear for a bitsandbytes layer and moves it to the device, which is the moment
bitsandbytes quantizes (``Int8Params`` / ``Params4bit`` quantize inside ``.to(device)``).

bitsandbytes 0.50.2 facts and limits found on the installed package (see also ``quant_support``):

* CPU is a real backend, no GPU needed. 8-bit: weights are quantized row-wise to int8 (via fp16), and each forward
  quantizes the activations to int8 too (inputs are cast to fp16 first; columns with |x| > threshold=6.0 go
  through an fp16 outlier path). The int8 matmul uses ``torch._int_mm`` only on AVX-512 CPUs (torch >= 2.6);
  elsewhere it falls back to slower generic code. Expect ~1% relative error per layer.
* CPU 4-bit (NF4): quantization uses blocks of 64 over the flattened weight. On CPUs with AVX512-BF16 the first
  eval-mode forward repacks the weight into a CPU layout and runs a fused kernel that computes in bf16 whatever
  the compute dtype (fp32 inputs are rounded to bf16). That kernel asserts ``out_features % 32 == 0`` and needs an
  even ``in_features``; other shapes crash there, so for them we switch the layer to the generic
  dequantize-then-matmul path (``support_avx512bf16_for_cpu = False``), which handles any shape. The repacking
  also drops double quantization of the absmax (slightly more memory than on CUDA). Expect ~9% relative error
  per layer (NF4 on Gaussian weights).
* On AVX512-BF16 CPUs bitsandbytes tries, at import, to fetch a faster kernel from the Hub through the optional
  ``kernels`` package ("kernels-community/quantization-bitsandbytes"): a network download we do not want. Without
  ``kernels`` installed it logs a warning and uses its built-in kernel; we silence that warning. With
  ``kernels`` installed the download is attempted at import (fails cleanly under HF_HUB_OFFLINE=1).
* 8-bit logs a warning on *every* forward whose input is not fp16 ("inputs will be cast ... to float16"); we
  filter it (the cast is expected) instead of flooding stderr.
* Inference only: quantized layers are frozen (``requires_grad=False``); moving a CPU-repacked 4-bit model to CUDA
  afterwards is not supported by us (quantize directly for the device you run on). MPS is not a bitsandbytes
  backend in this version's stable path: we refuse it.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch
from torch import nn

from ..errors import BadInputError
from ..noise import quiet_bitsandbytes

log = logging.getLogger(__name__)

__all__ = [
    "QUANT_MODES",
    "INSTALL_HINT",
    "normalize_quant",
    "import_bitsandbytes",
    "quantize_model",
    "quant_support",
]

QUANT_MODES = ("none", "8bit", "4bit")
INSTALL_HINT = "install the quant extra: pip install 'diffucoder-lsp[quant]'"
_ALIASES = {
    None: "none",
    "": "none",
    "none": "none",
    "no": "none",
    "8bit": "8bit",
    "int8": "8bit",
    "8": "8bit",
    "4bit": "4bit",
    "nf4": "4bit",
    "4": "4bit",
}
_SUPPORTED_DEVICES = ("cpu", "cuda", "xpu")


def normalize_quant(mode: str | None) -> str:
    """ "none" | "8bit" | "4bit" from the spellings users type (int8, nf4, ...)."""
    key = mode.strip().lower() if isinstance(mode, str) else mode
    if key not in _ALIASES:
        raise BadInputError(f"unknown quantization {mode!r}: use none, 8bit or 4bit")
    return _ALIASES[key]


def import_bitsandbytes() -> Any:
    """Import bitsandbytes with its expected-noise filters installed first; a clear error when missing."""
    quiet_bitsandbytes()
    try:
        import bitsandbytes
    except ImportError as exc:
        raise BadInputError(f"8-bit/4-bit loading needs bitsandbytes: {INSTALL_HINT}") from exc
    except Exception as exc:  # a broken native library shows up as other errors
        raise BadInputError(
            f"bitsandbytes failed to import ({type(exc).__name__}: {exc}); {INSTALL_HINT}"
        ) from exc
    return bitsandbytes


def _quantized_types(bnb: Any) -> tuple[type, ...]:
    return (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)


def _quantize_linear(lin: nn.Linear, mode: str, compute_dtype: torch.dtype, device: torch.device, bnb: Any):
    """A bitsandbytes layer holding ``lin``'s weights, quantized onto ``device``."""
    has_bias = lin.bias is not None
    weight = lin.weight.detach()
    # Built on meta: the bnb constructors would otherwise initialise a full random fp32 weight first.
    if mode == "8bit":
        q = bnb.nn.Linear8bitLt(
            lin.in_features,
            lin.out_features,
            bias=has_bias,
            has_fp16_weights=False,
            threshold=6.0,
            device="meta",
        )
        # Int8Params only quantizes when moved *from the CPU*.
        q.weight = bnb.nn.Int8Params(weight.cpu(), requires_grad=False, has_fp16_weights=False)
    else:
        q = bnb.nn.Linear4bit(
            lin.in_features,
            lin.out_features,
            bias=has_bias,
            compute_dtype=compute_dtype,
            quant_type="nf4",
            compress_statistics=True,
            device="meta",
        )
        q.weight = bnb.nn.Params4bit(
            weight, requires_grad=False, quant_type="nf4", compress_statistics=True, blocksize=64, module=q
        )
        if device.type == "cpu" and (lin.out_features % 32 or lin.in_features % 2):
            q.support_avx512bf16_for_cpu = False  # the fused CPU kernel cannot take this shape
    if has_bias:
        q.bias = nn.Parameter(lin.bias.detach(), requires_grad=False)
    return q.to(device)  # bitsandbytes quantizes here


def _move_rest(model: nn.Module, device: torch.device, skip: tuple[type, ...]) -> None:
    """Move every parameter not owned by a quantized layer, keeping tied parameters tied."""
    moved: dict[int, nn.Parameter] = {}
    for module in model.modules():
        if isinstance(module, skip):
            continue
        for name, p in list(module._parameters.items()):
            if p is None or p.device == device:
                continue
            if id(p) not in moved:
                moved[id(p)] = nn.Parameter(p.detach().to(device), requires_grad=False)
            module._parameters[name] = moved[id(p)]


def quantize_model(model: nn.Module, mode: str, device: str | torch.device) -> nn.Module:
    """Replace every ``nn.Linear`` inside ``model.model.layers`` by its 8-bit or 4-bit bitsandbytes twin.

    ``model`` should hold full-precision weights on the CPU (as ``load_model`` leaves it); the result lives on
    ``device``, in eval mode, with no gradients. Embeddings, norms and the LM head keep their dtype.
    """
    mode = normalize_quant(mode)
    device = torch.device(device)
    if mode == "none":
        return model.to(device)
    if device.type not in _SUPPORTED_DEVICES:
        raise BadInputError(
            f"bitsandbytes quantization does not run on {device.type}: use --device cpu or cuda"
        )
    bnb = import_bitsandbytes()
    skip = _quantized_types(bnb)
    compute_dtype = next(model.parameters()).dtype
    if compute_dtype == torch.float16 and device.type == "cpu":
        log.info("8/4-bit on CPU with fp16 activations is slow; bf16 or fp32 compute is recommended")
    count = 0
    for layer in model.model.layers:
        for parent in list(layer.modules()):
            for child_name, child in list(parent.named_children()):
                if type(child) is nn.Linear:
                    setattr(parent, child_name, _quantize_linear(child, mode, compute_dtype, device, bnb))
                    count += 1
    _move_rest(model, device, skip)
    model.eval()
    model.requires_grad_(False)
    log.info("quantized %d linear layers to %s on %s (compute dtype %s)", count, mode, device, compute_dtype)
    return model


def _probe(mode: str, device: torch.device, bnb: Any) -> dict[str, Any]:
    """Quantize one small Linear and run it: does this mode work here, and how far off is it."""
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
    lin = nn.Linear(128, 64, bias=True).to(dtype)
    x = torch.randn(4, 128, dtype=dtype)
    with torch.no_grad():
        ref = lin(x).float()
        q = _quantize_linear(lin, mode, dtype, device, bnb).eval()
        out = q(x.to(device)).float().cpu()
    rel = float((out - ref).norm() / ref.norm())
    if not torch.isfinite(out).all():
        return {"ok": False, "reason": "the quantized forward produced NaN/inf"}
    limit = 0.05 if mode == "8bit" else 0.25
    if rel > limit:
        return {"ok": False, "reason": f"runs but relative error {rel:.3f} exceeds {limit}"}
    return {"ok": True, "reason": f"ran on {device.type}, relative error {rel:.3f}"}


@functools.lru_cache(maxsize=4)
def _support(device_name: str) -> tuple[tuple[str, Any], ...]:
    device = torch.device(device_name)
    report: dict[str, Any] = {"device": device_name, "bitsandbytes": None}
    try:
        bnb = import_bitsandbytes()
    except BadInputError as exc:
        for mode in ("8bit", "4bit"):
            report[mode] = {"ok": False, "reason": str(exc)}
        return tuple(report.items())
    report["bitsandbytes"] = getattr(bnb, "__version__", "unknown")
    for mode in ("8bit", "4bit"):
        if device.type not in _SUPPORTED_DEVICES:
            report[mode] = {"ok": False, "reason": f"bitsandbytes does not run on {device.type}"}
            continue
        try:
            report[mode] = _probe(mode, device, bnb)
        except Exception as exc:  # any failure means "does not work here"
            log.debug("bitsandbytes %s probe failed", mode, exc_info=True)
            report[mode] = {"ok": False, "reason": f"{type(exc).__name__}: {exc}"}
    return tuple(report.items())


def quant_support(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Whether 8-bit and 4-bit actually run on ``device`` here: ``{"bitsandbytes": version|None, "device": ...,
    "8bit": {"ok": bool, "reason": str}, "4bit": {...}}``. Cached per device (the probe takes ~0.1 s)."""
    return {k: dict(v) if isinstance(v, dict) else v for k, v in _support(str(torch.device(device)))}
