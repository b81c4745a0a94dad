"""Fine-tuning data from a user's repository: which files, which holes, and batches of infill rows.

**Which files.** In a git work tree the file list is ``git ls-files --cached --others --exclude-standard``:
tracked files plus untracked ones that ``.gitignore`` does not exclude, so build outputs, virtualenvs and secrets
the user already ignores never become training data. Outside git we walk the folder, skip the usual
tool/build/virtualenv folders and apply the top-level ``.gitignore`` patterns with ``fnmatch`` (a simple subset
of git's rules, good enough for the common ``build/``, ``*.log`` lines). A language filter keeps files by suffix
(Python by default); files that are not UTF-8, too large or look generated/minified are dropped with the same
rules as the pretraining corpus (:func:`corpus.reject_reason`, minus its Python syntax check for other languages).

**Held-out files.** Evaluation must use files the model was not trained on: a file is held out when its path
matches a ``--holdout`` glob, else :func:`choose_heldout` holds out about ``holdout_fraction`` of the
repository's *characters*: files are taken in the order of the hash of their path (stable across edits, unlike
a content hash, so the split hardly moves while the user works) and a file is skipped when it would push the
held-out share past the target. Picking by path hash alone put click's ``core.py`` (a quarter of its code) in
the held-out set: training lost its biggest file and the evaluation measured mostly one file.

**Which holes.** Editors ask for a line, a few lines, or the body of a function, so SFT trains those three:

- ``line``: one whole line; ``block``: 2-8 consecutive lines;
- ``function``: the body of a ``def`` (Python, found with ``ast``) after its signature and docstring.

The span is cut at character offsets and the three pieces (before, span, after) are tokenized separately, the
way the engine lays out an infill canvas, then :func:`data.make_infill` builds the row exactly as in pretraining:
prefix + span + K eos pads + suffix, with span and pads trainable (the pads teach the model to end early in
an over-long hole).

**Instruction data.** A JSONL of ``{"prompt", "response"}`` becomes rows ``prompt + response + pads`` with only
the response and pads trainable (ChatML-wrapped when the tokenizer has ``<|im_start|>``, as the Instruct models
expect).

Batches are a pure function of ``(seed, step, rank)`` as in pretraining, so a resumed run draws the same data.
"""

from __future__ import annotations

import ast
import fnmatch
import hashlib
import json
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from .corpus import reject_reason
from .data import Batch, make_infill

log = logging.getLogger(__name__)

LANGUAGES: dict[str, tuple[str, ...]] = {
    "python": (".py",),
    "javascript": (".js", ".jsx", ".mjs"),
    "typescript": (".ts", ".tsx"),
    "go": (".go",),
    "rust": (".rs",),
    "java": (".java",),
    "c": (".c", ".h"),
    "cpp": (".cc", ".cpp", ".hpp", ".hh", ".cxx"),
    "shell": (".sh",),
}
SKIP_DIRS = {
    ".git",
    ".hg",
    ".svn",
    ".venv",
    "venv",
    "env",
    "__pycache__",
    "node_modules",
    ".mypy_cache",
    ".tox",
    ".pytest_cache",
    "build",
    "dist",
    ".eggs",
    "site-packages",
    ".ruff_cache",
}
HOLE_KINDS = ("line", "block", "function")
CHATML = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{query}\n<|im_end|>\n<|im_start|>assistant\n"


@dataclass
class RepoFile:
    path: str  # relative to the repository root, '/' separated
    text: str
    held_out: bool

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def as_doc(self) -> dict:
        """The ``{"path", "sha", "text"}`` row the intrinsic metric reads."""
        return {"path": self.path, "sha": self.sha, "text": self.text}


def suffixes_for(languages: str | list[str]) -> tuple[str, ...]:
    names = languages.split(",") if isinstance(languages, str) else list(languages)
    out: list[str] = []
    for name in (n.strip().lower() for n in names if n.strip()):
        if name.startswith("."):
            out.append(name)
        elif name in LANGUAGES:
            out.extend(LANGUAGES[name])
        else:
            raise BadInputError(
                f"unknown language {name!r}: use {', '.join(LANGUAGES)} or a suffix like .lua"
            )
    return tuple(out)


def _git_files(root: Path) -> list[str] | None:
    try:
        res = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0:
        return None
    return sorted({p for p in res.stdout.decode("utf-8", "replace").split("\0") if p})


def _ignore_patterns(root: Path) -> list[str]:
    try:
        lines = (root / ".gitignore").read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith(("#", "!"))]


def _ignored(rel: str, patterns: list[str]) -> bool:
    parts = rel.split("/")
    for pat in patterns:
        p = pat.rstrip("/").lstrip("/")
        if "/" in p:
            if fnmatch.fnmatch(rel, p) or rel.startswith(p + "/"):
                return True
        elif any(fnmatch.fnmatch(part, p) for part in parts):
            return True
    return False


def _walk_files(root: Path) -> list[str]:
    patterns = _ignore_patterns(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = sorted(
            d for d in dirnames if d not in SKIP_DIRS and not _ignored(rel_dir + d, patterns)
        )
        out.extend(rel_dir + f for f in sorted(filenames) if not _ignored(rel_dir + f, patterns))
    return sorted(out)


def list_repo_files(root: str | Path) -> tuple[list[str], str]:
    """Relative paths of the repository's files and how they were found (``git`` or ``walk``)."""
    root = Path(root)
    if not root.is_dir():
        raise BadInputError(f"no such repository folder: {root}")
    if (root / ".git").exists():
        files = _git_files(root)
        if files is not None:
            return files, "git"
        log.warning("git ls-files failed in %s; walking the folder instead", root)
    return _walk_files(root), "walk"


def _path_rank(rel: str) -> int:
    return int(hashlib.sha256(rel.encode("utf-8")).hexdigest()[:16], 16)


# a held-out set may overshoot its share of characters by this factor (a file that would push it further is
# skipped), so that a repository of a few similar files still reaches its target
HOLDOUT_SLACK = 1.25


def choose_heldout(files: list[RepoFile], fraction: float) -> None:
    """Mark about ``fraction`` of the files' characters held out (module docstring); at least one file when
    there are two or more and ``fraction`` > 0 (the smallest, if none fits the share), never all of them."""
    for f in files:
        f.held_out = False
    if fraction <= 0 or len(files) < 2:
        return
    total = sum(len(f.text) for f in files)
    target = fraction * total
    held = 0
    order = sorted(files, key=lambda f: _path_rank(f.path))
    for f in order:
        if held >= target:
            break
        if held + len(f.text) <= target * HOLDOUT_SLACK:
            f.held_out = True
            held += len(f.text)
    if not any(f.held_out for f in files):
        min(order, key=lambda f: len(f.text)).held_out = True
    if all(f.held_out for f in files):
        max(order, key=lambda f: len(f.text)).held_out = False


def split_summary(files: list[RepoFile]) -> dict:
    """Counts and character shares of the train / held-out split, for the log and the run folder."""
    held = [f for f in files if f.held_out]
    chars = sum(len(f.text) for f in files)
    held_chars = sum(len(f.text) for f in held)
    return {
        "files": len(files),
        "heldout_files": len(held),
        "heldout_chars": held_chars,
        "heldout_char_share": round(held_chars / chars, 4) if chars else 0.0,
        "largest_heldout_file_share": round(max((len(f.text) for f in held), default=0) / chars, 4)
        if chars
        else 0.0,
    }


def write_heldout(files: list[RepoFile], out: str | Path) -> tuple[Path, Path]:
    """``OUT/heldout.txt`` (one path per line) and ``OUT/heldout.jsonl`` (``{"path", "sha", "text"}`` rows, what
    ``diffucoder eval intrinsic --corpus`` reads): the evaluation set, kept so it can be rerun on any model."""
    out = Path(out)
    held = [f for f in files if f.held_out]
    txt, jsonl = out / "heldout.txt", out / "heldout.jsonl"
    txt.write_text("".join(f.path + "\n" for f in held), encoding="utf-8")
    jsonl.write_text("".join(json.dumps(f.as_doc()) + "\n" for f in held), encoding="utf-8")
    return txt, jsonl


def load_repo(
    root: str | Path,
    languages: str | list[str] = "python",
    holdout: list[str] | None = None,
    holdout_fraction: float = 0.1,
    max_files: int | None = None,
) -> list[RepoFile]:
    """The repository's source files of the chosen languages, each marked held out or not: by the ``holdout``
    globs when given, else by :func:`choose_heldout` (a small repository still gets one held-out file; a single
    file is never held out)."""
    root = Path(root)
    suffixes = suffixes_for(languages)
    rels, how = list_repo_files(root)
    files: list[RepoFile] = []
    dropped: dict[str, int] = {}
    for rel in rels:
        if not rel.endswith(suffixes):
            continue
        path = root / rel
        if path.is_symlink() or not path.is_file():
            continue
        try:
            raw = path.read_bytes()
        except OSError:
            dropped["unreadable"] = dropped.get("unreadable", 0) + 1
            continue
        reason, text = reject_reason(raw)
        if reason == "syntax" and not rel.endswith(".py"):
            reason = None  # the syntax rule is a Python parser: it says nothing about other languages
        if reason is not None:
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        held = any(fnmatch.fnmatch(rel, g) for g in holdout) if holdout else False
        files.append(RepoFile(rel, text, held))
        if max_files and len(files) >= max_files:
            break
    if not holdout:
        choose_heldout(files, holdout_fraction)
    log.info("repo %s (%s): %d files kept, dropped %s", root, how, len(files), dropped or "none")
    return files


# ------------------------------------------------------------------------------------------------ holes


def line_starts(text: str) -> list[int]:
    """Character offset of the start of each line (and one past the end), for ast line numbers -> offsets."""
    starts = [0]
    for line in text.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    return starts


def body_after_docstring(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.stmt]:
    """A function's statements without its docstring: the part a body hole masks."""
    body = node.body
    if (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(getattr(body[0], "value", None), ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        body = body[1:]
    return body


def function_bodies(text: str) -> list[tuple[int, int]]:
    """Character spans of Python function bodies (after signature and docstring), whole lines, nested included."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError):
        return []
    starts = line_starts(text)
    spans = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        body = body_after_docstring(node)
        if not body or body[0].lineno <= node.lineno:  # empty after the docstring, or a one-line def
            continue
        a = starts[body[0].lineno - 1]
        end_line = node.end_lineno or body[-1].end_lineno or body[-1].lineno
        b = starts[min(end_line, len(starts) - 1)]
        if b > a:
            spans.append((a, b))
    return spans


def line_span(text: str, rng: np.random.Generator, kind: str) -> tuple[int, int] | None:
    """A random non-blank line (``line``) or 2-8 consecutive lines (``block``), as character offsets."""
    lines = text.splitlines(keepends=True)
    if not lines:
        return None
    starts = np.cumsum([0] + [len(ln) for ln in lines])
    candidates = [i for i, ln in enumerate(lines) if ln.strip()]
    if not candidates:
        return None
    i = int(candidates[int(rng.integers(0, len(candidates)))])
    n = 1 if kind == "line" else int(rng.integers(2, 9))
    j = min(i + n, len(lines))
    return int(starts[i]), int(starts[j])


class RepoExampleSampler:
    """Draws SFT batches from repository files (and instruction pairs) as a pure function of (seed, step, rank).

    Each file is tokenized once when the sampler is built; spans are cut on characters and re-tokenized as three
    pieces, which costs little next to a training step.
    """

    def __init__(
        self,
        files: list[RepoFile],
        tok,
        seq_len: int,
        line_end: np.ndarray,
        *,
        instructions: list[dict] | None = None,
        instruction_fraction: float = 0.5,
        window_fraction: float = 0.0,
        kinds: tuple[str, ...] = HOLE_KINDS,
        kind_weights: tuple[float, ...] | None = None,
        seed: int = 0,
        rank: int = 0,
    ) -> None:
        self.files = [f for f in files if f.text.strip()]
        self.instructions = instructions or []
        if not self.files and not self.instructions:
            raise BadInputError("no training data: no repository files and no instruction pairs")
        self.tok = tok
        self.seq_len = seq_len
        self.line_end = line_end
        self.instruction_fraction = (
            instruction_fraction if self.files and self.instructions else (1.0 if self.instructions else 0.0)
        )
        if not 0.0 <= window_fraction <= 1.0:
            raise BadInputError(f"window fraction must be in [0, 1], got {window_fraction}")
        self.window_fraction = window_fraction if self.files else 0.0
        self.kinds = kinds
        w = np.asarray(kind_weights or [1.0] * len(kinds), dtype=float)
        self.kind_p = w / w.sum()
        self.seed, self.rank = seed, rank
        self._bodies = [function_bodies(f.text) if f.path.endswith(".py") else [] for f in self.files]
        self._chatml = tok._tok.token_to_id("<|im_start|>") is not None if hasattr(tok, "_tok") else False

    def _file_example(self, rng: np.random.Generator):
        i = int(rng.integers(0, len(self.files)))
        text = self.files[i].text
        kind = self.kinds[int(rng.choice(len(self.kinds), p=self.kind_p))]
        span = None
        if kind == "function" and self._bodies[i]:
            span = self._bodies[i][int(rng.integers(0, len(self._bodies[i])))]
        if span is None:
            span = line_span(text, rng, "line" if kind == "line" else "block")
        if span is None:
            return None
        a, b = span
        pre, mid, suf = (self.tok.encode(s) for s in (text[:a], text[a:b], text[b:]))
        if not mid:
            return None
        doc = np.asarray(pre + mid + suf, dtype=np.int64)
        ex = make_infill(
            doc, self.seq_len, self.tok.eos_id, self.line_end, rng, span=(len(pre), len(pre) + len(mid))
        )
        return ex.ids, ex.start, ex.end

    def _window_example(self, rng: np.random.Generator):
        """``seq_len`` tokens of a file from a random line on, every token trainable: the plain masked diffusion
        loss, as pretraining's packed windows. An infill row trains only its hole (about a tenth of the tokens the
        network reads); a window trains them all. (On click it did not raise the held-out line metrics in ten
        CPU minutes, so it is off by default.)"""
        text = self.files[int(rng.integers(0, len(self.files)))].text
        starts = line_starts(text)[:-1]
        a = int(starts[int(rng.integers(0, len(starts)))]) if starts else 0
        ids = self.tok.encode(text[a : a + 8 * self.seq_len])[: self.seq_len]  # 8 chars a token is plenty
        if not ids:
            return None
        return np.asarray(ids, dtype=np.int64), 0, len(ids)

    def instruction_ids(self, row: dict, rng: np.random.Generator) -> tuple[np.ndarray, int, int]:
        prompt = CHATML.format(query=row["prompt"]) if self._chatml else row["prompt"]
        p_ids = self.tok.encode(prompt)
        r_ids = self.tok.encode(row["response"])
        if self._chatml and self.tok.im_end_id is not None:
            r_ids = r_ids + [self.tok.im_end_id]
        pad_id = (
            self.tok.dlm_pad_id if (self._chatml and self.tok.dlm_pad_id is not None) else self.tok.eos_id
        )
        pads = int(rng.integers(0, len(r_ids) + 1))
        room = self.seq_len - min(len(r_ids), self.seq_len - 1)
        p_ids = p_ids[-max(1, min(len(p_ids), room - 1)) :] if p_ids else []
        r_ids = r_ids[: self.seq_len - len(p_ids)]
        pads = max(0, min(pads, self.seq_len - len(p_ids) - len(r_ids)))
        ids = np.asarray(p_ids + r_ids + [pad_id] * pads, dtype=np.int64)
        return ids, len(p_ids), len(ids)

    def batch(self, step: int, batch_size: int) -> Batch:
        rng = np.random.default_rng([self.seed, step, self.rank])
        L = self.seq_len
        ids = np.full((batch_size, L), self.tok.eos_id, dtype=np.int64)
        trainable = np.zeros((batch_size, L), dtype=bool)
        valid = np.zeros((batch_size, L), dtype=bool)
        infill = np.ones(batch_size, dtype=bool)
        for r in range(batch_size):
            ex = None
            if self.instructions and rng.random() < self.instruction_fraction:
                ex = self.instruction_ids(
                    self.instructions[int(rng.integers(0, len(self.instructions)))], rng
                )
                infill[r] = False
            elif self.window_fraction and rng.random() < self.window_fraction:
                ex = self._window_example(rng)
                infill[r] = ex is None
            for _ in range(8):
                if ex is not None:
                    break
                ex = self._file_example(rng)
            if ex is None:
                continue
            row, a, b = ex
            n = min(len(row), L)
            ids[r, :n] = row[:n]
            valid[r, :n] = True
            trainable[r, a : min(b, n)] = True
        return Batch(ids, trainable, valid, infill)


def read_instructions(path: str | Path) -> list[dict]:
    """``{"prompt", "response"}`` rows of a JSONL file; malformed lines are a bad input, named by number."""
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if (
                    not isinstance(row, dict)
                    or not isinstance(row.get("prompt"), str)
                    or not isinstance(row.get("response"), str)
                ):
                    raise ValueError(f"line {n} needs string fields prompt and response")
                rows.append(row)
    except (OSError, ValueError) as exc:
        raise BadInputError(f"cannot read instructions {path}: {exc}") from exc
    return rows
