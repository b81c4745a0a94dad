"""Reading a checkpoint's small files as data: regular files only, size-capped, parsed defensively.

A checkpoint folder comes from anywhere (the Hub, a colleague, a download that went wrong). Its ``config.json``
may be a symlink to ``/dev/zero`` (an endless read), a FIFO (a read that blocks for ever), a multi-gigabyte file
or JSON nested 100,000 deep (a RecursionError). Each of those must be a one-line :class:`CheckpointError`, never
a hang or an exhausted machine. Symlinks to regular files stay allowed: the Hugging Face cache is made of them.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

MAX_JSON_BYTES = 64 * 2**20  # a tokenizer.json of a 150k vocabulary is ~10 MB; configs are a few KB


def check_regular(path: str | os.PathLike, what: str = "file") -> os.stat_result:
    """``path``'s stat when it is a regular file (after symlinks); a clear error for a device, FIFO, folder."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"no {what} at {path}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a device, FIFO or socket)"
        raise CheckpointError(f"{path} is {kind}: a checkpoint's {what} must be a regular file")
    return st


def is_regular(path: Path) -> bool:
    """Whether ``path`` exists and is a regular file (after symlinks), without raising."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def read_bytes_capped(path: str | os.PathLike, limit: int, what: str = "file") -> bytes:
    """The file's bytes, if it is a regular file of at most ``limit`` bytes. Opened non-blocking and checked
    again on the open descriptor, so a file swapped for a FIFO after the first check cannot block the read."""
    check_regular(path, what)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointError(f"{path} is not a regular file")
        if st.st_size > limit:
            raise CheckpointError(f"{path} is {st.st_size:,} bytes, more than a {what} may be ({limit:,})")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:  # grew while being read
                raise CheckpointError(f"{path} is larger than a {what} may be ({limit:,} bytes)")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_json(path: str | os.PathLike, what: str = "JSON file", limit: int = MAX_JSON_BYTES) -> Any:
    """A small JSON file's value; every failure (size, encoding, syntax, depth) is a one-line CheckpointError."""
    data = read_bytes_capped(path, limit, what)
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path} is not UTF-8 text: {exc.reason}") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise CheckpointError(f"{path} is nested too deeply to be a {what}") from None
