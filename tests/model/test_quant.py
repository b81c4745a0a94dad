"""8-bit and 4-bit loading on CPU through bitsandbytes.

Tolerances, stated: tiny random-weight models amplify quantization error through the layers far more than real
checkpoints do, so the comparisons against the full-precision model are loose, and a tight check is added for
4-bit: our NF4 model must equal the bf16 model whose linear weights were replaced by their NF4 round-trip
(quantize then dequantize with bitsandbytes' own functions), i.e. the kernels and our wiring add only bf16
rounding on top of the intended quantization error.

* 8-bit vs bf16: relative logit error < 0.08 and top-1 agreement >= 0.85 (measured ~0.04 / ~0.95).
* 4-bit vs bf16: relative logit error < 0.5 and top-1 agreement >= 0.35 (measured ~0.33 / ~0.52; chance is
  ~0.003).
* 4-bit vs NF4 round-trip emulation: relative error < 0.05 and top-1 agreement >= 0.9 (measured ~0.02 / ~0.98).
"""

from __future__ import annotations

import copy
import logging
import sys

import pytest
import torch
from torch import nn

from diffucoder_lsp.errors import BadInputError
from diffucoder_lsp.model.loading import load_model
from diffucoder_lsp.model.quant import import_bitsandbytes, normalize_quant, quant_support, quantize_model
from diffucoder_lsp.model.tiny import write_tiny_checkpoint

LINEARS_PER_LAYER = 7  # q, k, v, o, gate, up, down


def _bnb():
    try:
        return import_bitsandbytes()
    except BadInputError as exc:
        pytest.skip(f"bitsandbytes is not importable: {exc}")


@pytest.fixture(scope="module")
def quant_ckpt(tmp_path_factory):
    """A slightly larger tiny model (hidden 128) so quantization error is not dominated by tiny-dim effects."""
    return write_tiny_checkpoint(
        tmp_path_factory.mktemp("quant") / "ckpt", shards=2, hidden_size=128, intermediate_size=256
    )


@pytest.fixture(scope="module")
def reference(quant_ckpt):
    lm = load_model(quant_ckpt, device="cpu", dtype="bf16")
    ids = torch.randint(0, lm.tokenizer.vocab_size, (2, 96), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = lm.model(ids).float()
    return lm, ids, logits


def _compare(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    rel = float((out.float() - ref).norm() / ref.norm())
    top1 = float((out.argmax(-1) == ref.argmax(-1)).float().mean())
    return rel, top1


def _check_structure(lm, bnb, layer_type) -> None:
    model = lm.model
    quantized = [m for m in model.modules() if isinstance(m, layer_type)]
    assert len(quantized) == LINEARS_PER_LAYER * lm.config.num_hidden_layers
    assert not [m for layer in model.model.layers for m in layer.modules() if type(m) is nn.Linear]
    # Embeddings and the LM head stay in full precision.
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight.dtype == torch.bfloat16
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert all(p.device.type == "cpu" and not p.requires_grad for p in model.parameters())
    assert not model.training


@pytest.mark.slow  # the first bitsandbytes import in a run costs ~2 s
def test_8bit_on_cpu_stays_close_to_bf16(quant_ckpt, reference, caplog):
    bnb = _bnb()
    _, ids, ref = reference
    lm = load_model(quant_ckpt, device="cpu", dtype="bf16", quant="8bit")
    assert lm.quant == "8bit" and lm.dtype == torch.bfloat16
    _check_structure(lm, bnb, bnb.nn.Linear8bitLt)
    assert lm.model.model.layers[0].mlp.up_proj.weight.dtype == torch.int8
    with caplog.at_level(logging.WARNING), torch.no_grad():
        out = lm.model(ids)
    assert "inputs will be cast" not in caplog.text  # bitsandbytes' per-forward noise is filtered
    assert torch.isfinite(out).all()
    rel, top1 = _compare(out, ref)
    assert rel < 0.08 and top1 >= 0.85, (rel, top1)


def _nf4_roundtrip_model(model: nn.Module) -> nn.Module:
    import bitsandbytes.functional as F

    emu = copy.deepcopy(model)
    with torch.no_grad():
        for layer in emu.model.layers:
            for m in layer.modules():
                if type(m) is nn.Linear:
                    q, state = F.quantize_4bit(
                        m.weight.data, blocksize=64, quant_type="nf4", compress_statistics=True
                    )
                    m.weight.data = F.dequantize_4bit(q, state).to(m.weight.dtype)
    return emu


def test_4bit_on_cpu_matches_nf4_and_stays_near_bf16(quant_ckpt, reference):
    bnb = _bnb()
    ref_lm, ids, ref = reference
    lm = load_model(quant_ckpt, device="cpu", dtype="bf16", quant="4bit")
    assert lm.quant == "4bit"
    _check_structure(lm, bnb, bnb.nn.Linear4bit)
    assert lm.model.model.layers[0].self_attn.q_proj.weight.dtype == torch.uint8
    with torch.no_grad():
        out = lm.model(ids)
        emulated = _nf4_roundtrip_model(ref_lm.model)(ids).float()
    assert torch.isfinite(out).all()
    rel, top1 = _compare(out, ref)
    assert rel < 0.5 and top1 >= 0.35, (rel, top1)
    rel_emu, top1_emu = _compare(out, emulated)
    assert rel_emu < 0.05 and top1_emu >= 0.9, (rel_emu, top1_emu)


@pytest.mark.parametrize("mode", ["8bit", "4bit"])
def test_shapes_the_fused_cpu_kernel_cannot_take(tmp_path, mode):
    """hidden 72: k/v project to 36 features, not a multiple of 32 (the AVX512-BF16 4-bit kernel asserts on it)."""
    _bnb()
    folder = write_tiny_checkpoint(tmp_path / "odd", shards=1, hidden_size=72, intermediate_size=144)
    ref = load_model(folder, device="cpu", dtype="fp32")
    lm = load_model(folder, device="cpu", dtype="fp32", quant=mode)
    ids = torch.randint(0, ref.tokenizer.vocab_size, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = lm.model(ids)
        expected = ref.model(ids)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    rel, _ = _compare(out, expected.float())
    assert rel < (0.08 if mode == "8bit" else 0.5), rel


def test_quant_support_reports_both_modes_working_on_cpu():
    bnb = _bnb()
    report = quant_support("cpu")
    assert report["bitsandbytes"] == bnb.__version__
    assert report["device"] == "cpu"
    for mode in ("8bit", "4bit"):
        assert report[mode]["ok"] is True, report[mode]
        assert "relative error" in report[mode]["reason"]
    assert quant_support("mps")["8bit"] == {"ok": False, "reason": "bitsandbytes does not run on mps"}


def test_quantize_refuses_unsupported_devices():
    model = nn.Module()
    with pytest.raises(BadInputError, match="does not run on mps"):
        quantize_model(model, "4bit", "mps")


def test_normalize_quant():
    assert normalize_quant(None) == "none"
    assert normalize_quant("none") == "none"
    assert normalize_quant("INT8") == "8bit"
    assert normalize_quant("nf4") == "4bit"
    assert normalize_quant("4bit") == "4bit"
    with pytest.raises(BadInputError, match="unknown quantization"):
        normalize_quant("2bit")
    with pytest.raises(BadInputError, match="unknown quantization"):
        load_model(None, quant="3bit")


def test_missing_bitsandbytes_gives_the_install_hint(monkeypatch, tiny_ckpt):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` raise ImportError
    with pytest.raises(BadInputError, match=r"pip install 'diffucoder-lsp\[quant\]'"):
        import_bitsandbytes()
    with pytest.raises(BadInputError, match="install the quant extra"):
        load_model(str(tiny_ckpt), device="cpu", quant="8bit")
