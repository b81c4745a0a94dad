"""Find, check and load a DiffuCoder checkpoint into a :class:`DreamModel` without trusting its files.

Why this module is strict:

* A checkpoint folder from the Hub holds remote-code ``.py`` files and may hold pickle weights. Pickle can run
  arbitrary code when loaded, and remote code is code: we read only ``config.json``, ``tokenizer.json`` and
  ``*.safetensors``, never import anything from the folder, and refuse pickle-only folders with a way out.
* A 7B model is ~15 GB. The network is built on the ``meta`` device (no memory), tensors are read one at a time
  from safetensors, cast straight to the target dtype/device and *assigned* into the module, so there is never a
  second copy. Key names and shapes are checked from the file headers before any tensor is read, so a mismatched
  checkpoint fails in milliseconds with the offending keys named instead of after a long load.
* When a model does not fit on one GPU, accelerate spreads whole decoder layers over the GPUs (and CPU). The CPU
  path never imports accelerate.

Quantized loads (8-bit / 4-bit) read the weights on the CPU in the compute dtype and hand the model to
:func:`diffucoder_lsp.model.quant.quantize_model`, which quantizes the transformer linears onto the target device.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import BadInputError, CheckpointError
from .bundled import (
    BUNDLED_ADAPTATION_DIR,
    TINY_MODEL_DIR,
    default_model_path,
    default_model_status,
    tiny_model_path,
)
from .cache import build_folder_atomically, cache_root
from .config import ModelConfig
from .devices import (
    as_device,
    auto_dtype,
    cpu_bf16_support,
    dispatch,
    placement,
    plan_device_map,
    resolve_device,
    resolve_dtype,
    tune_cpu_runtime,
)
from .files import check_regular, is_regular, read_json
from .network import DreamModel
from .tokenizer import CodeTokenizer

log = logging.getLogger(__name__)

__all__ = [
    "LoadedModel",
    "TINY_MODEL_DIR",
    "BUNDLED_ADAPTATION_DIR",
    "tiny_model_path",
    "cache_root",
    "default_model_path",
    "default_model_status",
    "resolve_checkpoint",
    "resolve_device",
    "resolve_dtype",
    "auto_dtype",
    "cpu_bf16_support",
    "find_weight_files",
    "load_model",
]

# What a checkpoint needs from the Hub. Never ``*.py`` (remote code) and never ``*.bin`` (pickle).
HUB_ALLOW_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "vocab*", "merges.txt"]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# "org/name" or "org/name@revision"; anything else that does not exist on disk is a typo'd path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*(@[A-Za-z0-9_./-]+)?$")
# Derived buffers some old Qwen2 exports carry; they are recomputed, never loaded.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass
class LoadedModel:
    """Everything a caller needs to run a checkpoint; ``device`` is where inputs must go."""

    model: DreamModel
    tokenizer: CodeTokenizer
    config: ModelConfig
    path: Path
    device: torch.device
    dtype: torch.dtype
    quant: str
    name: str


# --------------------------------------------------------------------------------------------- where models live


def resolve_checkpoint(name_or_path: str | os.PathLike | None) -> Path:
    """A local checkpoint folder for a path, a Hub id ("org/name[@revision]"), "tiny", "base" (the bundled
    model's autoregressive base, SmolLM2-135M) or None/"default".

    None (no model named) means ``$DIFFUCODER_MODEL`` when it is set (any of the above), else the bundled
    default: one switch for every command and the language server (the test suite points it at ``tiny``).
    """
    if name_or_path is None and os.environ.get("DIFFUCODER_MODEL", "").strip():
        name_or_path = os.environ["DIFFUCODER_MODEL"].strip()
    if name_or_path is None or str(name_or_path) in ("", "default"):
        return default_model_path()
    if str(name_or_path) == "tiny":
        return tiny_model_path()
    if str(name_or_path) == "base":  # the bundled model's AR base, fetched and converted once
        from .base import fetch_base

        return fetch_base()
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        if path.is_file() and path.suffix.lower() == ".gguf":
            return gguf_checkpoint(path)
        if not path.is_dir():
            raise CheckpointError(
                f"{path} is a file: pass the checkpoint folder that holds config.json (or a .gguf file)"
            )
        return path.resolve()
    if _HUB_ID.match(text):
        return _from_hub(text)
    raise CheckpointError(
        f"no checkpoint folder at {text!r}: pass a folder holding config.json, a Hugging Face id such as "
        "apple/DiffuCoder-7B-Instruct, 'default', 'tiny' or 'base'"
    )


def gguf_checkpoint(path: Path) -> Path:
    """The checkpoint folder converted from a GGUF file, made once in the cache (keyed by name, size, mtime)."""
    import hashlib

    from .gguf import convert_gguf

    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_root() / "gguf" / f"{path.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    log.warning("converting %s into %s (once)", path, target)
    return build_folder_atomically(target, lambda folder: convert_gguf(path, folder))


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def hub_offline() -> bool:
    """Offline as the environment says *now* (huggingface_hub reads it only once, at import)."""
    if _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - very old huggingface_hub
        return False


def hub_cache_dir() -> Path:
    """The HF hub cache as the environment says now ($HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface)."""
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(key):
            return Path(os.environ[key]).expanduser()
    home = os.environ.get("HF_HOME")
    if home:
        return Path(home).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def _from_hub(spec: str) -> Path:
    repo_id, _, revision = spec.partition("@")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise BadInputError(
            "huggingface_hub is needed to fetch Hub models: pip install huggingface_hub"
        ) from exc
    offline = hub_offline()
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision or None,
            cache_dir=str(hub_cache_dir()),
            allow_patterns=HUB_ALLOW_PATTERNS,
            local_files_only=offline,
        )
    except Exception as exc:
        names = {cls.__name__ for cls in type(exc).__mro__}
        if "LocalEntryNotFoundError" in names or "IncompleteSnapshotError" in names:
            why = "offline (HF_HUB_OFFLINE is set)" if offline else "the Hub could not be reached"
            raise CheckpointError(
                f"{repo_id} is not in the local cache ({hub_cache_dir()}) and {why}: download it once with "
                "network access, or pass a local checkpoint folder"
            ) from exc
        if "RepositoryNotFoundError" in names or "GatedRepoError" in names:
            raise CheckpointError(
                f"{repo_id} was not found on the Hub or needs authorization (check the id; gated models need "
                "`hf auth login`)"
            ) from exc
        if "RevisionNotFoundError" in names:
            raise CheckpointError(f"{repo_id} has no revision {revision!r}") from exc
        raise CheckpointError(f"could not fetch {repo_id}: {type(exc).__name__}: {exc}") from exc
    return Path(folder)


# ---------------------------------------------------------------------------------------------- memory


def load_dev_for(device: torch.device, quant: str) -> torch.device:
    """Where the weights are first materialised: quantization loads on the CPU, then moves."""
    return torch.device("cpu") if quant != "none" else device


def available_memory_bytes() -> int | None:
    """Memory the process can still take on this machine (MemAvailable), or None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - optional, and any failure only means "unknown"
        return None


def check_memory(cfg: ModelConfig, dtype: torch.dtype, device: torch.device) -> None:
    """Refuse up front a model that cannot fit the CPU's free memory ("needs 14.2 GB, 3.1 GB free") instead of
    failing inside the allocator, or in the OOM killer, minutes later. CUDA placement is planned separately
    (:func:`plan_device_map` spreads a model over GPUs or warns)."""
    if device.type != "cpu":
        return
    need = cfg.num_parameters * torch.empty((), dtype=dtype).element_size()
    free = available_memory_bytes()
    if free is not None and need > free:
        raise CheckpointError(
            f"the model needs {need / 1e9:.1f} GB of memory for its weights ({cfg.num_parameters / 1e9:.2f}B "
            f"parameters in {str(dtype).removeprefix('torch.')}), but {free / 1e9:.1f} GB is free: use a smaller "
            "model, --quant 4bit, or a GPU"
        )


# ---------------------------------------------------------------------------------------------- weight files


def find_weight_files(folder: Path) -> list[Path]:
    """The safetensors files to read, checked: index shards present, no pickle-only folders."""
    return _weight_files(folder)[0]


def _weight_files(folder: Path) -> tuple[list[Path], dict[str, str] | None]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        body = read_json(index, "safetensors index")
        weight_map = body.get("weight_map") if isinstance(body, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index} is not a valid safetensors index (no weight_map of file names)")
        names = sorted(set(weight_map.values()))
        for name in names:
            if Path(name).name != name or not name.endswith(".safetensors"):
                raise CheckpointError(f"{index.name} names an unsafe or non-safetensors shard {name!r}")
        missing = [n for n in names if not is_regular(folder / n)]
        if missing:
            raise CheckpointError(
                f"shard {missing[0]} named in {index.name} is missing from {folder}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                + "; the download is incomplete"
            )
        return [folder / n for n in names], weight_map
    single = folder / "model.safetensors"
    if single.exists():
        check_regular(single, "weights file")  # a FIFO or device here would block or never end
        return [single], None
    # regular files only: a FIFO named *.safetensors would block the header read for ever
    found = sorted(f for f in folder.glob("*.safetensors") if is_regular(f))
    if len(found) == 1:
        return found, None
    if len(found) > 1:
        raise CheckpointError(
            f"{folder} holds several .safetensors files but no model.safetensors.index.json"
        )
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{folder} only has pickle weights ({', '.join(pickles[:3])}): pickle weights are refused for safety "
            "(loading them can execute arbitrary code). Convert them to safetensors once, in an environment you "
            'trust: `python -c "import torch; from safetensors.torch import save_file; '
            f"save_file(torch.load('{pickles[0]}', weights_only=True), 'model.safetensors')\"` "
            "(or download the checkpoint's safetensors revision)"
        )
    raise CheckpointError(f"no weights (*.safetensors) in {folder}")


def _read_headers(
    files: list[Path], weight_map: dict[str, str] | None
) -> dict[str, tuple[Path, tuple[int, ...]]]:
    """key -> (file, shape), from the safetensors headers only (nothing is loaded)."""
    from safetensors import safe_open

    out: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt", device="cpu") as fh:
                for key in fh.keys():
                    out[key] = (f, tuple(fh.get_slice(key).get_shape()))
        except Exception as exc:  # safetensors raises its own error type for corrupt headers
            raise CheckpointError(
                f"{f.name} is not a readable safetensors file (corrupt or truncated?): {exc}"
            ) from exc
    if weight_map is not None:
        absent = [k for k, name in weight_map.items() if k not in out or out[k][0].name != name]
        if absent:
            raise CheckpointError(
                f"model.safetensors.index.json places {absent[0]} in {weight_map[absent[0]]}, "
                "but that shard does not hold it"
            )
    return out


def _preview(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def _check_keys(
    expected: dict[str, tuple[int, ...]], found: dict[str, tuple[Path, tuple[int, ...]]], folder: Path
) -> None:
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected and not k.endswith(_IGNORED_SUFFIXES)]
    mismatch = [
        f"{k}: file {list(found[k][1])} vs config {list(shape)}"
        for k, shape in expected.items()
        if k in found and found[k][1] != shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_preview(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_preview(unexpected)}")
    if mismatch:
        problems.append(f"shape mismatch: {_preview(mismatch, 3)}")
    if problems:
        raise CheckpointError(
            f"the weights in {folder} do not match its config.json (not a DiffuCoder/Qwen2 checkpoint of this "
            "shape?): " + "; ".join(problems)
        )


def _read_tensors(
    keys: dict[str, tuple[Path, tuple[int, ...]]], dtype: torch.dtype, place: Callable[[str], torch.device]
) -> dict[str, torch.Tensor]:
    """Read tensors one at a time, each cast straight to its dtype/device, so only one transient copy exists."""
    from safetensors import safe_open

    by_file: dict[Path, list[str]] = {}
    for key, (f, _) in keys.items():
        by_file.setdefault(f, []).append(key)
    state: dict[str, torch.Tensor] = {}
    for f, names in by_file.items():
        try:
            with safe_open(str(f), framework="pt", device="cpu") as fh:
                for key in names:
                    t = fh.get_tensor(key)
                    target = place(key)
                    state[key] = t.to(device=target, dtype=dtype if t.is_floating_point() else t.dtype)
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"cannot read tensors from {f.name} (corrupt file?): {exc}") from exc
    return state


# --------------------------------------------------------------------------------------------------- loading


def _memory_note(model: DreamModel, device: torch.device) -> str:
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    note = f"{weights / 2**30:.2f} GiB of weights"
    try:
        import resource

        note += f", peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"
    except Exception:  # pragma: no cover - not on POSIX
        pass
    if device.type == "cuda":
        note += f", {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB peak on {device}"
    return note


def load_model(
    name_or_path: str | os.PathLike | None = None,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    quant: str | None = "none",
    device_map: str | dict[str, Any] | None = None,
) -> LoadedModel:
    """Load a checkpoint (folder, Hub id or default) ready for inference: eval mode, no gradients."""
    from .quant import normalize_quant

    start = time.perf_counter()
    quant = normalize_quant(quant)
    path = resolve_checkpoint(name_or_path)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if dev.type == "cpu":
        tune_cpu_runtime()
    cfg = ModelConfig.from_file(path / "config.json")
    check_memory(cfg, dt, load_dev_for(dev, quant))
    headers = _read_headers(*_weight_files(path))
    tokenizer = CodeTokenizer.from_dir(path, cfg)  # fail on a bad tokenizer before the long part

    with torch.device("meta"):
        model = DreamModel(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tied = cfg.tie_word_embeddings
    if tied:  # lm_head shares the embedding; a tied checkpoint may or may not store it
        expected.pop("lm_head.weight", None)
        headers.pop("lm_head.weight", None)
    _check_keys(expected, headers, path)
    wanted = {k: headers[k] for k in expected}

    device_map = plan_device_map(model, cfg, dev, dt, device_map, quant)
    if device_map is not None and len({str(as_device(v)) for v in device_map.values()}) == 1:
        dev, device_map = as_device(next(iter(device_map.values()))), None  # everything fits on one device
    load_dev = torch.device("cpu") if quant != "none" else dev
    place = placement(device_map) if device_map is not None else (lambda _key: load_dev)

    state = _read_tensors(wanted, dt, place)
    if tied:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:  # pre-checked above; anything left is still the checkpoint's fault
        raise CheckpointError(f"cannot load the weights in {path}: {exc}") from exc
    del state
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    on_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if on_meta:
        raise CheckpointError(f"weights left unloaded (still on the meta device): {_preview(on_meta)}")
    model.eval()
    model.requires_grad_(False)

    if quant != "none":
        from .quant import quantize_model

        model = quantize_model(model, quant, dev)
    elif device_map is not None:
        dev = dispatch(model, device_map)
        log.info("device map: %s", device_map)

    log.info(
        "loaded %s from %s in %.2fs: %.3fB params, %s, %s%s; %s",
        name_or_path or "default",
        path,
        time.perf_counter() - start,
        cfg.num_parameters / 1e9,
        str(dt).removeprefix("torch."),
        dev,
        f", {quant}" if quant != "none" else "",
        _memory_note(model, dev),
    )
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        config=cfg,
        path=path,
        device=dev,
        dtype=dt,
        quant=quant,
        name=str(name_or_path) if name_or_path else "default",
    )
