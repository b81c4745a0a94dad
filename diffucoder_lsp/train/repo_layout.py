"""Where a repository's importable code lives: its import roots, and the harness code that puts them first.

GRPO's repository tasks run the repository's tests (tracing, rewards) in the sandbox on a copy of it, and the
sandbox mounts the project's site-packages for the tests' dependencies. Without the repository's own roots first
on ``sys.path``, a ``src/`` layout's tests imported an installed copy of the same package (on pallets/click: 0
tasks, every call went to site-packages). The roots are the folders ``pyproject.toml`` (or ``setup.cfg``)
declares, then ``src/`` when it holds Python files, then the root; ``setup.py`` is never executed, and a declared
path that leaves the repository or does not exist is ignored. :func:`layout_code` also reports which of the
repository's packages a run imported from anywhere else.
"""

from __future__ import annotations

import configparser
import functools
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import BadInputError
from .repo_data import list_repo_files

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    try:
        import tomli as tomllib
    except ModuleNotFoundError:  # pyproject.toml is not read; src/ and the root are still used
        tomllib = None

log = logging.getLogger(__name__)


def is_test_file(rel: str) -> bool:
    """Test code (never a task): test modules, anything under tests/, and conftest.py (fixtures)."""
    name = rel.rsplit("/", 1)[-1]
    return (
        name == "conftest.py"
        or name.startswith("test_")
        or name.endswith("_test.py")
        or "/tests/" in f"/{rel}"
    )


# top-level files of an import root that are not the project's importable code
_NOT_PACKAGES = {"setup", "conftest", "noxfile", "__init__", "__main__"}


@dataclass
class Layout:
    """Where a repository's importable code lives."""

    roots: tuple[str, ...]  # relative to the repository ('.': the root), the first first on sys.path
    # top-level module or package name -> its path in the repository
    homes: dict[str, str] = field(default_factory=dict)


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _as_list(v) -> list:
    return [v] if isinstance(v, str) else list(v) if isinstance(v, list) else []


def _parent(path) -> str | None:
    """The import root of a declared package folder (``src/foo`` -> ``src``)."""
    if not isinstance(path, str) or not path.strip().strip("/"):
        return None
    return PurePosixPath(path.strip().rstrip("/")).parent.as_posix()


def _clean_dir(root: Path, value) -> str | None:
    """A declared folder as a path relative to the repository, or None when it is not a folder inside it."""
    if not isinstance(value, str):
        return None
    v = value.strip().replace("\\", "/")
    pp = PurePosixPath(v or ".")
    if pp.is_absolute() or ".." in pp.parts:
        return None
    rel = pp.as_posix()
    try:
        inside = (root / rel).resolve().is_relative_to(root.resolve())
    except OSError:
        return None
    return rel if inside and (root / rel).is_dir() else None


def _read_pyproject(path: Path) -> dict:
    if tomllib is None or not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        log.warning("%s is unreadable (%s): the package folders it declares are not used", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def declared_roots(root: str | Path) -> list[str]:
    """Import roots the repository's packaging declares, relative to it, in order: ``pyproject.toml``'s
    setuptools ``packages.find.where`` and ``package-dir``, hatch ``packages``/``sources``, poetry ``packages``
    ``from``, pdm ``package-dir``, uv ``module-root``, maturin ``python-source``, scikit-build ``wheel.packages``,
    and ``setup.cfg``'s ``package_dir``/``packages.find where``. Read as data (``setup.py`` is never run);
    folders that do not exist inside the repository are ignored."""
    root = Path(root)
    tool = _get(_read_pyproject(root / "pyproject.toml"), "tool")
    raw: list = []
    st = _get(tool, "setuptools")
    raw += _as_list(_get(st, "packages", "find", "where"))
    pkg_dir = _get(st, "package-dir")
    if isinstance(pkg_dir, dict):
        for name, d in pkg_dir.items():
            if name == "":
                raw.append(d)
            elif isinstance(d, str) and "." not in name and PurePosixPath(d.rstrip("/")).name == name:
                raw.append(_parent(d))
    for base in (_get(tool, "hatch", "build"), _get(tool, "hatch", "build", "targets", "wheel")):
        raw += [_parent(x) for x in _as_list(_get(base, "packages"))]
        sources = _get(base, "sources")
        if isinstance(sources, list):
            raw += sources  # each prefix is stripped from the installed paths: an import root
        elif isinstance(sources, dict):
            raw += [k for k, v in sources.items() if v == ""]
    for entry in _as_list(_get(tool, "poetry", "packages")):
        if isinstance(entry, dict):
            raw.append(entry.get("from", "."))
    raw += _as_list(_get(tool, "pdm", "build", "package-dir"))
    raw += _as_list(_get(tool, "uv", "build-backend", "module-root"))
    raw += _as_list(_get(tool, "maturin", "python-source"))
    raw += [_parent(x) for x in _as_list(_get(tool, "scikit-build", "wheel", "packages"))]
    cfg = root / "setup.cfg"
    if cfg.is_file():
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(cfg, encoding="utf-8")
        except (configparser.Error, OSError, UnicodeDecodeError) as exc:
            log.warning("%s is unreadable (%s): the package folders it declares are not used", cfg, exc)
        else:
            for line in parser.get("options", "package_dir", fallback="").splitlines():
                name, sep, d = line.partition("=")
                if sep and not name.strip():
                    raw.append(d.strip())
            raw += parser.get("options.packages.find", "where", fallback="").split()
    out: list[str] = []
    for value in raw:
        rel = _clean_dir(root, value)
        if rel is not None and rel not in out:
            out.append(rel)
    return out


def repo_layout(root: str | Path, rels: list[str] | None = None) -> Layout:
    """The repository's import roots, first wins: what its packaging declares (:func:`declared_roots`), then
    ``src/`` when it holds Python files, then the root; and the top-level modules and packages they define
    (``rels``: the repository's files, default :func:`repo_data.list_repo_files`). At the root only folders with
    an ``__init__.py`` count as packages (``docs/``, ``scripts/`` do not); test code, ``setup.py`` and names of the
    standard library are left out."""
    root = Path(root)
    if rels is None:
        rels, _ = list_repo_files(root)
    py = sorted(r for r in rels if r.endswith(".py"))
    pyset = set(py)
    has_src = any(r.startswith("src/") and not is_test_file(r) for r in py)
    roots: list[str] = []
    for r in [*declared_roots(root), *(["src"] if has_src else []), "."]:
        if r not in roots:
            roots.append(r)
    homes: dict[str, str] = {}
    for r in roots:
        prefix = "" if r == "." else r + "/"
        for rel in py:
            if not rel.startswith(prefix):
                continue
            parts = rel[len(prefix) :].split("/")
            if len(parts) == 1:
                name, home = parts[0][:-3], rel
                if is_test_file(rel) or name in _NOT_PACKAGES:
                    continue
            else:
                name, home = parts[0], prefix + parts[0]
                if is_test_file(home + "/__init__.py") or (r == "." and home + "/__init__.py" not in pyset):
                    continue
            if name.isidentifier() and name not in sys.stdlib_module_names and name not in homes:
                homes[name] = home
    return Layout(tuple(roots), homes)


@functools.lru_cache(maxsize=32)
def cached_layout(root: str) -> Layout:
    """:func:`repo_layout` of a repository folder, computed once per process (for the rewards)."""
    try:
        return repo_layout(root)
    except (OSError, BadInputError) as exc:
        log.warning(
            "cannot read the layout of %s (%s): its tests run with the root on sys.path only", root, exc
        )
        return Layout((".",))


# Put into each harness before pytest is imported: the import roots first on sys.path and PYTHONPATH (for the
# tests' subprocesses), and _outside(): the repository's packages that were imported from anywhere but their home.
_LAYOUT_CODE = r"""
_BOXDIR = os.path.realpath(os.getcwd())
_ROOTS = [os.path.realpath(os.path.join(_BOXDIR, _r)) for _r in {roots!r}]
sys.path[:] = _ROOTS + [_p for _p in sys.path if os.path.realpath(_p or os.curdir) not in _ROOTS]
os.environ["PYTHONPATH"] = os.pathsep.join(_ROOTS)
_HOMES = {homes!r}
def _outside():
    _out = {{}}
    for _name, _rel in _HOMES.items():
        _m = sys.modules.get(_name)
        if _m is None:
            continue
        _home = os.path.realpath(os.path.join(_BOXDIR, _rel))
        try:
            _locs = [getattr(_m, "__file__", None)] + list(getattr(_m, "__path__", None) or [])
            _locs = [os.path.realpath(_l) for _l in _locs if isinstance(_l, str)]
        except Exception:
            continue
        if _locs and not any(_l == _home or _l.startswith(_home + os.sep) for _l in _locs):
            _l = _locs[0]
            _out[_name] = os.path.relpath(_l, _BOXDIR) if _l.startswith(_BOXDIR + os.sep) else _l
    return _out
"""


def layout_code(layout: Layout) -> str:
    """Python source for a sandbox harness (needs ``os`` and ``sys``; runs in the copy of the repository)."""
    return _LAYOUT_CODE.format(roots=list(layout.roots), homes=dict(layout.homes))
