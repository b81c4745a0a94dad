"""Imports flow one way: model <- engine <- {server, tui, train, eval, analyze, bench} <- commands <- cli.

The check reads the package's source with :mod:`ast` (nothing is imported), so it also sees imports made inside
functions and under ``TYPE_CHECKING``: a cycle hidden behind a lazy import is still a cycle in the design. It
fails on any import cycle between modules and on any import against the layering, and it is itself tested on
small planted packages, so a check that silently passes everything would fail here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "diffucoder_lsp"

# rank of each room (the first dotted part under the package); a module may import its own room or a lower rank
RANKS = {
    "errors": 0,
    "sandbox": 0,
    "judge": 0,
    "analysis": 0,
    "noise": 0,
    "model": 1,
    "engine": 2,
    "server": 3,
    "backend": 3,
    "tui": 3,
    "train": 3,
    "eval": 3,
    "analyze": 3,
    "bench": 3,
    "commands": 4,
    "cli": 5,
}
# the sideways imports between rooms of one rank that the design allows: fine-tuning reports evaluation
# metrics, the analysis plots read evaluation tasks, the judge runs its programs in the sandbox, and the HTTP
# backend answers with the language server's post-processing and decoding defaults; the reverse direction
# stays closed (no cycle)
SIDEWAYS = {("train", "eval"), ("analyze", "eval"), ("judge", "sandbox"), ("backend", "server")}


def module_files(package: Path) -> dict[str, Path]:
    """Dotted module name -> source file, for every module of ``package`` (packages as their ``__init__``)."""
    mods: dict[str, Path] = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom, mods: dict) -> set[str]:
    """The package modules an import statement depends on (``from . import sub`` is ``sub``, not ``.``)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in mods}
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        name = ".".join(base + ([node.module] if node.module else []))
    else:
        name = node.module or ""
    out = set()
    for alias in node.names:
        sub = f"{name}.{alias.name}"
        out.add(sub if sub in mods else name)
    return {m for m in out if m in mods}


def import_graph(package: Path) -> dict[str, set[str]]:
    mods = module_files(package)
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        deps: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                deps |= _targets(name, path.name == "__init__.py", node, mods)
        deps.discard(name)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def layering_violations(graph: dict[str, set[str]], ranks=RANKS, sideways=SIDEWAYS) -> list[str]:
    """Imports against the layering. Entry points (``__main__`` modules, the package itself) may import anything."""
    bad = []
    for module, deps in sorted(graph.items()):
        room = _room(module)
        if room is None or module.endswith(".__main__"):
            continue
        if room not in ranks:
            bad.append(f"{module}: room {room!r} has no rank in the layering")
            continue
        for dep in sorted(deps):
            target = _room(dep)
            if target is None or target == room:
                continue
            if target not in ranks:
                bad.append(f"{module} -> {dep}: room {target!r} has no rank")
            elif ranks[target] > ranks[room]:
                bad.append(f"{module} -> {dep}: upward ({room} is below {target})")
            elif ranks[target] == ranks[room] and (room, target) not in sideways:
                bad.append(f"{module} -> {dep}: sideways between {room} and {target}")
    return bad


def test_the_package_has_no_import_cycle():
    assert cycles(import_graph(PACKAGE)) == []


def test_imports_follow_the_layering():
    assert layering_violations(import_graph(PACKAGE)) == []


def test_the_graph_sees_the_imports_that_matter():
    """Lazy and TYPE_CHECKING imports count, and ``from . import sub`` points at ``sub``."""
    graph = import_graph(PACKAGE)
    assert "diffucoder_lsp.engine.options" in graph["diffucoder_lsp.engine.choice"]
    assert (
        "diffucoder_lsp.model.base" in graph["diffucoder_lsp.model.bundled"]
    )  # `from . import base` in a function
    assert "diffucoder_lsp.server.host" in graph["diffucoder_lsp.server.actions"]  # under TYPE_CHECKING
    assert any(d.startswith("diffucoder_lsp.engine") for d in graph["diffucoder_lsp.server.engine_client"])


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root / "pkg"


@pytest.mark.parametrize(
    "importer",
    [
        "from .b import f\n",
        "def g():\n    from .b import f\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import f\n",
        "from . import b\n",
    ],
)
def test_a_planted_cycle_is_found(tmp_path, importer):
    pkg = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/engine/__init__.py": "",
            "pkg/engine/a.py": importer,
            "pkg/engine/b.py": "from .a import x\n",
        },
    )
    assert cycles(import_graph(pkg)) == [["pkg.engine.a", "pkg.engine.b"]]


def test_a_planted_upward_or_sideways_import_is_found(tmp_path):
    pkg = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/model/__init__.py": "",
            "pkg/model/net.py": "from ..engine.step import run\n",
            "pkg/engine/__init__.py": "",
            "pkg/engine/step.py": "import math\n",
            "pkg/server/__init__.py": "",
            "pkg/server/app.py": "from ..tui.view import View\nfrom ..engine import step\n",
            "pkg/server/__main__.py": "from ..cli import main\n",
            "pkg/tui/__init__.py": "",
            "pkg/tui/view.py": "",
            "pkg/cli.py": "",
        },
    )
    bad = layering_violations(import_graph(pkg))
    assert len(bad) == 2
    assert bad[0].startswith("pkg.model.net -> pkg.engine.step: upward")
    assert bad[1].startswith("pkg.server.app -> pkg.tui.view: sideways")
    assert cycles(import_graph(pkg)) == []
