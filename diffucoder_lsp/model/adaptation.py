"""The shipped form of an adapted model: what changed from its base, small enough to live in the wheel.

Why not ship the model: the base (SmolLM2-135M) is ~270 MB and comes from its licensed source at first use
(:mod:`.base`); the adaptation to masked diffusion is ours and is a few per cent of that. It is stored as

- ``NAME.delta_a`` (r, in) and ``NAME.delta_b`` (out, r) for a matrix whose change has rank <= r (LoRA's
  merged update, exactly) or is truncated to its top r singular directions (a full fine-tune, approximately);
- ``NAME.delta`` for a changed vector (norms, biases), whole;
- ``NAME.rows`` and ``NAME.row_ids`` for embedding rows replaced outright (the new mask token's row);

all bf16 but the ids, in one safetensors file, with ``adaptation.json`` naming the format, the base it applies
to (the fingerprint of the base's tensors, so a different conversion is refused instead of merged into
nonsense), the result's config and how well each low-rank factorisation fits. Reading is data only
(safetensors, JSON) and every shape is checked against the base before anything is added.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import torch

from ..errors import CheckpointError
from .cache import file_sha256

log = logging.getLogger(__name__)

FORMAT = "diffucoder-adaptation"
VERSION = 1
MANIFEST = "adaptation.json"
WEIGHTS = "adaptation.safetensors"
MAX_FILE_BYTES = 512 * 2**20
# Files that travel with an adaptation into the merged model folder.
CARRIED_FILES = ("MODEL_CARD.md", "calibration.json", "LICENSE-SmolLM2.txt", "NOTICE.txt")
BASE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "generation_config.json",
)
_SUFFIXES = (".delta_a", ".delta_b", ".delta", ".rows", ".row_ids")


def state_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names, shapes, dtypes and bytes, in name order: the identity of a base's weights."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().contiguous().cpu()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def make_adaptation(
    base: dict[str, torch.Tensor],
    tuned: dict[str, torch.Tensor],
    rank: int,
    exact_rows: dict[str, list[int]] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """The tensors of ``tuned - base`` in the shipped form, and a per-tensor report (kind, relative error).

    ``exact_rows`` names rows stored whole (e.g. ``{"model.embed_tokens.weight": [mask_id]}``); the rest of
    each matrix's change is factorised at ``rank``.
    """
    if rank < 1:
        raise ValueError("rank must be >= 1")
    missing = sorted(set(base) ^ set(tuned))
    if missing:
        raise CheckpointError(f"base and tuned weights differ in names: {missing[:5]}")
    exact_rows = exact_rows or {}
    out: dict[str, torch.Tensor] = {}
    report: dict[str, dict] = {}
    for name in sorted(base):
        b, t = base[name].float(), tuned[name].float()
        if b.shape != t.shape:
            raise CheckpointError(f"{name}: base {tuple(b.shape)} vs tuned {tuple(t.shape)}")
        delta = t - b
        rows = sorted(set(exact_rows.get(name, [])))
        if rows:
            ids = torch.tensor(rows, dtype=torch.int64)
            out[f"{name}.rows"] = t[ids].to(torch.bfloat16)
            out[f"{name}.row_ids"] = ids
            delta[ids] = 0.0
            report[f"{name}.rows"] = {"kind": "rows", "n": len(rows)}
        if not bool(delta.any()):
            continue
        if delta.ndim == 1:
            out[f"{name}.delta"] = delta.to(torch.bfloat16)
            report[name] = {"kind": "vector"}
            continue
        if delta.ndim != 2:
            raise CheckpointError(f"{name}: cannot factorise a {delta.ndim}-d change")
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        r = min(rank, s.numel())
        root = s[:r].sqrt()
        b_fac, a_fac = u[:, :r] * root, root[:, None] * vh[:r]
        approx = b_fac.to(torch.bfloat16).float() @ a_fac.to(torch.bfloat16).float()
        err = float((approx - delta).norm() / delta.norm().clamp_min(1e-30))
        out[f"{name}.delta_a"] = a_fac.to(torch.bfloat16).contiguous()
        out[f"{name}.delta_b"] = b_fac.to(torch.bfloat16).contiguous()
        report[name] = {"kind": "low_rank", "rank": r, "relative_error": round(err, 5)}
    return out, report


def scale_adaptation(tensors: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """The adaptation with its change scaled: merged, it gives ``base + scale * (adapted - base)``.

    Why: a short adaptation can wear down what the base knew faster than it adds what it learns, and the
    weights between the two can be better than either end (the bundled model measured so). Low-rank changes are
    scaled through their ``B`` factor (the product scales exactly), vectors whole (a lookahead bias moves from
    its causal start toward what it learned); replaced rows (the mask token's) are values, not changes, and are
    kept. ``scale`` is in (0, 1]."""
    if not isinstance(scale, (int, float)) or not 0.0 < float(scale) <= 1.0:
        raise ValueError(f"scale must be in (0, 1], got {scale!r}")
    out = {}
    for key, t in tensors.items():
        if key.endswith((".delta_b", ".delta")):  # the changes; .delta_a, .rows, .row_ids as they are
            out[key] = (t.float() * float(scale)).to(t.dtype)
        else:
            out[key] = t
    return out


def rescale_adaptation(src: str | Path, out: str | Path, scale: float) -> dict:
    """Write ``src``'s adaptation scaled by ``scale`` (:func:`scale_adaptation`) to ``out`` (may be ``src``),
    with the files it carries; the manifest's ``training.scale`` records the product of all scalings.
    Returns the new manifest."""
    src, out = Path(src), Path(out)
    manifest, tensors = read_adaptation(src)
    scaled = scale_adaptation(tensors, scale)
    body = {k: v for k, v in manifest.items() if k not in ("format", "version", "weights_sha256")}
    training = dict(body.get("training") or {})
    before = training.get("scale", 1.0)
    training["scale"] = round(float(before if isinstance(before, (int, float)) else 1.0) * float(scale), 6)
    body["training"] = training
    if out.resolve() != src.resolve():
        out.mkdir(parents=True, exist_ok=True)
        for name in CARRIED_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, out / name)
        write_adaptation(out, scaled, body)
        return read_manifest(out)
    # in place: written beside, then moved over (weights first: a stop between leaves a checksum error, not a
    # half-written file the loaded tensors may still be reading)
    tmp = out / ".rescale.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    write_adaptation(tmp, scaled, body)
    os.replace(tmp / WEIGHTS, out / WEIGHTS)
    os.replace(tmp / MANIFEST, out / MANIFEST)
    shutil.rmtree(tmp, ignore_errors=True)
    return read_manifest(out)


def write_adaptation(folder: str | Path, tensors: dict[str, torch.Tensor], manifest: dict) -> Path:
    """Write the safetensors file and ``adaptation.json`` (format and version filled in)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / WEIGHTS))
    body = {"format": FORMAT, "version": VERSION, **manifest}
    body["weights_sha256"] = file_sha256(folder / WEIGHTS)
    (folder / MANIFEST).write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    return folder


def read_manifest(folder: str | Path) -> dict:
    """``adaptation.json``, checked for format, version and the fields a merge needs."""
    from .files import read_json

    path = Path(folder) / MANIFEST
    body = read_json(path, MANIFEST, limit=4 << 20)
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} manifest")
    if body.get("version") != VERSION:
        raise CheckpointError(f"{path}: format version {body.get('version')!r}, this release reads {VERSION}")
    for key, kind in (("config", dict), ("base", dict), ("weights_sha256", str)):
        if not isinstance(body.get(key), kind):
            raise CheckpointError(f"{path}: missing or malformed {key!r}")
    if not isinstance(body["base"].get("fingerprint"), str):
        raise CheckpointError(f"{path}: the base's fingerprint is missing")
    return body


def read_adaptation(folder: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The manifest and tensors, after checking the file's size and checksum (data only: safetensors)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    manifest = read_manifest(folder)
    path = folder / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {WEIGHTS}")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise CheckpointError(f"{path} is {size} bytes, more than an adaptation may be ({MAX_FILE_BYTES})")
    digest = file_sha256(path)
    if digest != manifest["weights_sha256"]:
        raise CheckpointError(f"{path} does not match its manifest's sha256 (a corrupt or edited file)")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    for key in tensors:
        if not key.endswith(_SUFFIXES):
            raise CheckpointError(f"{path}: unexpected tensor {key!r}")
    return manifest, tensors


def merge_adaptation(
    base: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``base`` + the adaptation, in float32; every shape is checked before anything is added."""
    plan: list[tuple[str, str]] = []
    for key in tensors:
        for suffix in _SUFFIXES:
            if key.endswith(suffix):
                plan.append((key[: -len(suffix)], suffix))
                break
    for name, suffix in plan:
        if name not in base:
            raise CheckpointError(f"the adaptation changes {name!r}, which the base does not have")
        shape = tuple(base[name].shape)
        t = tensors[name + suffix]
        if suffix == ".delta" and tuple(t.shape) != shape:
            raise CheckpointError(f"{name}.delta is {tuple(t.shape)}, the base's {name} is {shape}")
        if suffix in (".delta_a", ".delta_b"):
            a, b = tensors.get(name + ".delta_a"), tensors.get(name + ".delta_b")
            if a is None or b is None or len(shape) != 2 or a.ndim != 2 or b.ndim != 2:
                raise CheckpointError(f"{name}: low-rank factors missing or not matrices")
            if a.shape[0] != b.shape[1] or b.shape[0] != shape[0] or a.shape[1] != shape[1]:
                raise CheckpointError(
                    f"{name}: factors {tuple(b.shape)} x {tuple(a.shape)} do not make {shape}"
                )
        if suffix in (".rows", ".row_ids"):
            rows, ids = tensors.get(name + ".rows"), tensors.get(name + ".row_ids")
            if rows is None or ids is None or ids.dtype != torch.int64 or ids.ndim != 1 or len(shape) != 2:
                raise CheckpointError(f"{name}: replaced rows or their ids missing or malformed")
            if tuple(rows.shape) != (ids.numel(), shape[1]):
                raise CheckpointError(
                    f"{name}.rows is {tuple(rows.shape)}, expected ({ids.numel()}, {shape[1]})"
                )
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= shape[0]):
                raise CheckpointError(f"{name}.row_ids point outside the base's {shape[0]} rows")
    merged = {k: v.float().clone() for k, v in base.items()}
    for name, suffix in plan:
        if suffix == ".delta":
            merged[name] += tensors[name + suffix].float()
        elif suffix == ".delta_a":
            merged[name] += tensors[name + ".delta_b"].float() @ tensors[name + ".delta_a"].float()
    for name, suffix in plan:  # replaced rows last: they are values, not changes
        if suffix == ".rows":
            merged[name][tensors[name + ".row_ids"]] = tensors[name + ".rows"].float()
    return merged


def with_new_parameters(base: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """``base`` as a model of ``config`` starts from: the parameters the config adds over the AR base (the
    learned lookahead's per-head biases) at their initial values, so an adaptation stores their change like any
    other vector's. The fingerprint is always taken of the base before this."""
    if config.get("learned_lookahead") is not True:
        return base
    from .network import LOOKAHEAD_INIT

    layers, heads = config.get("num_hidden_layers"), config.get("num_attention_heads")
    if (
        not isinstance(layers, int)
        or not isinstance(heads, int)
        or not 0 < layers <= 1024
        or not 0 < heads <= 1024
    ):
        raise CheckpointError("the adaptation's config has no valid num_hidden_layers / num_attention_heads")
    out = dict(base)
    for i in range(layers):
        out.setdefault(f"model.layers.{i}.self_attn.lookahead_bias", torch.full((heads,), LOOKAHEAD_INIT))
    return out


def build_adapted_folder(adaptation_dir: str | Path, base_dir: str | Path, out: str | Path) -> Path:
    """Write a loadable checkpoint folder: the base's files with merged fp32 weights and the result's config.

    Refuses a base whose fingerprint differs from the one the adaptation was made against.
    """
    from safetensors.torch import load_file, save_file

    adaptation_dir, base_dir, out = Path(adaptation_dir), Path(base_dir), Path(out)
    manifest, tensors = read_adaptation(adaptation_dir)
    weights = sorted(base_dir.glob("*.safetensors"))
    if not weights:
        raise CheckpointError(f"the base folder {base_dir} holds no safetensors")
    base: dict[str, torch.Tensor] = {}
    for w in weights:
        base.update(load_file(str(w)))
    found = state_fingerprint(base)
    if found != manifest["base"]["fingerprint"]:
        raise CheckpointError(
            f"the base at {base_dir} is not the one this adaptation was made for (fingerprint {found[:12]}, "
            f"expected {manifest['base']['fingerprint'][:12]}): remove that folder so it is fetched again"
        )
    merged = merge_adaptation(with_new_parameters(base, manifest["config"]), tensors)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in merged.items()}, str(out / "model.safetensors"))
    config = dict(manifest["config"])
    config["torch_dtype"] = "float32"
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    for name in BASE_FILES:  # the tokenizer's files; never an index of shards we replaced, never code
        if (base_dir / name).is_file():
            shutil.copy2(base_dir / name, out / name)
    for name in CARRIED_FILES:
        if (adaptation_dir / name).is_file():
            shutil.copy2(adaptation_dir / name, out / name)
    return out


def refresh_carried_files(adaptation_dir: Path, merged: Path) -> list[str]:
    """Bring a merged folder's carried files (card, calibration, licence) up to the installed adaptation's.

    The merged folder is named after the adaptation's weights, so a release that only recalibrates the
    confidence gate or rewrites the card keeps the folder; without this its users would go on reading the old
    ``calibration.json``. Each changed file is replaced whole (written beside it, then renamed); one that cannot
    be written is left as it was, with a warning. Returns the names replaced."""
    done = []
    for name in CARRIED_FILES:
        src, dst = adaptation_dir / name, merged / name
        try:
            if not src.is_file() or (dst.is_file() and dst.read_bytes() == src.read_bytes()):
                continue
            tmp = dst.with_name(f".{name}.tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
            done.append(name)
        except OSError as exc:
            log.warning("could not update %s from the installed package: %s", dst, exc)
    return done
