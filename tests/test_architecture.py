"""The engine's layers hold: import-linter's contracts in ``pyproject.toml`` (one room per
purpose, each importing only the rooms below it; no torch under the workspace; no Qt under the
docks), and they catch a circle when one is added."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "importlinter", reason="import-linter is in the test extra, which make test installs"
)

ROOT = Path(__file__).resolve().parents[1]


def _with_import(tmp_path: Path, module: str, target: str) -> Path:
    """A copy of the package under ``tmp_path/src`` in which ``module`` (a path inside the
    package) imports ``from {target}`` inside a function, as a lazy import would."""
    copy = tmp_path / "src"
    shutil.copytree(
        ROOT / "src" / "napari_mtssl",
        copy / "napari_mtssl",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    path = copy / "napari_mtssl" / module
    path.write_text(path.read_text() + f"\n\ndef _added():\n    from {target}  # noqa: F401\n")
    return copy


def _lint(src: Path, cwd: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with the project's contracts over the package found under ``src``."""
    exe = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [str(exe), "--config", str(ROOT / "pyproject.toml"), "--no-cache"]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_contracts_hold(tmp_path):
    r = _lint(ROOT / "src", tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0 broken" in r.stdout and "KEPT" in r.stdout


@pytest.mark.parametrize(
    "module, target, arrow",
    [
        # io importing the api, a room above it
        ("io/__init__.py", "napari_mtssl import api", "napari_mtssl.io -> napari_mtssl.api"),
        # inside the engine: prediction climbing to the pipeline that runs it
        (
            "training/prediction/inference.py",
            "napari_mtssl.training.running import pipeline",
            "napari_mtssl.training.prediction.inference -> napari_mtssl.training.running.pipeline",
        ),
    ],
)
def test_a_circle_breaks_them(tmp_path, module, target, arrow):
    """An import of a room above is refused, naming the import."""
    copy = _with_import(tmp_path, module, target)
    r = _lint(copy, tmp_path)
    assert r.returncode != 0, r.stdout
    assert "BROKEN" in r.stdout
    assert arrow in " ".join(r.stdout.split())  # the report wraps long lines


_CYCLES = """
import sys
import grimp

graph = grimp.build_graph("napari_mtssl", cache_dir=None)
DEPTH = int(sys.argv[1])  # 0: modules; n: the packages n names deep (2: io, export, ...)


def room(module):
    return module if not DEPTH else ".".join(module.split(".")[:DEPTH])


edges = {}
for m in graph.modules:
    for t in graph.find_modules_directly_imported_by(m):
        if room(t) != room(m):
            edges.setdefault(room(m), set()).add(room(t))
state, found = {}, []


def visit(module, path):
    state[module] = 1
    path.append(module)
    for target in sorted(edges.get(module, ())):
        if state.get(target) == 1:
            found.append(path[path.index(target):] + [target])
        elif target not in state:
            visit(target, path)
    path.pop()
    state[module] = 2


sys.setrecursionlimit(10000)
for module in sorted({room(m) for m in graph.modules}):
    if module not in state:
        visit(module, [])
print("\\n".join(" -> ".join(c) for c in found))
"""


def _cycles(src: Path, depth: int = 0) -> list[str]:
    """Import circles among the package's modules under ``src`` (``depth`` > 0: among its
    packages that many names deep, each module counted in its package), imports inside
    functions counted (grimp reads every import statement, wherever it sits)."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    r = subprocess.run(
        [sys.executable, "-c", _CYCLES, str(depth)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    return [line for line in r.stdout.splitlines() if line.strip()]


def test_no_import_circles_even_inside_functions(tmp_path):
    """An import inside a function delays a heavy module (torch, Qt, the engine) for a quick
    start; it never hides a circle: none exists, lazy or not, between any two modules."""
    assert _cycles(ROOT / "src") == []
    copy = _with_import(tmp_path, "io/dataset.py", ". import read_scans")  # one it once found
    assert any("napari_mtssl.io.dataset" in c for c in _cycles(copy))


@pytest.mark.parametrize(
    "depth, module, upward, rooms",
    [
        # io -> export, as io/napari_io.py's DICOM-SEG writer once did (export reads io)
        (2, "io/nifti.py", "napari_mtssl.export import dicomseg", ("io", "export")),
        # the engine's data room -> its running room (which opens the data)
        (3, "training/data/preprocess.py", "napari_mtssl.training.running import units",
         ("training.data", "training.running")),
    ],
)  # fmt: skip
def test_no_circles_between_rooms(tmp_path, depth, module, upward, rooms):
    """Between the rooms (io, export, workspace, training, ...; and one level down: the
    engine's running, planning, loop, data, prediction), not only between two modules: a
    module of io that imports export while a module of export imports io is a circle of the
    rooms."""
    assert _cycles(ROOT / "src", depth) == []
    copy = _with_import(tmp_path, module, upward)
    found = _cycles(copy, depth)
    assert any(all(f"napari_mtssl.{r}" in c for r in rooms) for c in found), found


def _imports_inside_functions(path: Path) -> list[tuple[int, str, bool]]:
    """``(line, module, says_why)`` for each import statement inside a function of ``path``.
    An import says why with a comment on its own lines or the line above, or by following,
    in the same block, an import that does."""
    lines = path.read_text().splitlines()
    found = []
    for fn in ast.walk(ast.parse("\n".join(lines))):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        blocks = [fn.body]
        for node in ast.walk(fn):
            if node is not fn and not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                blocks += [
                    b
                    for f in ("body", "orelse", "finalbody")
                    if isinstance(b := getattr(node, f, None), list)
                ]
        for block in blocks:
            follows_a_reason = False
            for st in block:
                if not isinstance(st, ast.Import | ast.ImportFrom):
                    follows_a_reason = False
                    continue
                own = lines[st.lineno - 1 : st.end_lineno]
                above = lines[st.lineno - 2] if st.lineno > 1 else ""
                why = any("#" in s for s in [above, *own]) or follows_a_reason
                follows_a_reason = why
                name = (
                    st.names[0].name
                    if isinstance(st, ast.Import)
                    else "." * st.level + (st.module or "")
                )
                found.append((st.lineno, name, why))
    return sorted(set(found))


def test_imports_inside_functions_say_why():
    """Imports sit at the top of their file unless a heavy package is delayed on purpose
    (torch, Qt, an image library a reader may not need), and each such place says why; the
    standard library is never worth delaying."""
    stdlib = set(sys.stdlib_module_names)
    silent, stdlib_late = [], []
    for path in sorted((ROOT / "src").rglob("*.py")):
        for line, name, why in _imports_inside_functions(path):
            where = f"{path.relative_to(ROOT)}:{line} {name}"
            if name.split(".")[0] in stdlib:
                stdlib_late.append(where)
            elif not why:
                silent.append(where)
    assert not stdlib_late, "standard-library imports inside functions:\n" + "\n".join(stdlib_late)
    assert not silent, "imports inside functions without a reason:\n" + "\n".join(silent)
