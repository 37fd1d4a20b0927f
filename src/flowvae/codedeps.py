"""The package files each stage of the workflow depends on, derived from the imports.

A rule lists the files of its stage as inputs (``code=CODE[stage]`` in the workflow), so that
editing one reruns the stage and what follows it. A stage's files are

- its entry modules (``ENTRY``: the modules the stage's command hands its work to), and every
  package module they import, directly or through others: the *static* import closure, read
  from the source with :mod:`ast` (nothing is imported, so the Snakefile's parse loads neither
  torch nor matplotlib). Every form counts: ``import flowvae.x``, ``from flowvae import x``,
  ``from flowvae.x import y``, relative imports, and imports inside functions (they run when
  the function does). Importing ``flowvae.a.b`` runs ``flowvae/__init__.py`` and
  ``flowvae/a/__init__.py`` too, so they count;
- every module of a package that discovers its modules (its ``__init__.py`` imports
  :mod:`pkgutil`, as ``flowvae.posteriors`` does to find the posterior families), since no
  import names them; for one run, only the module of its own family (``files(stage,
  family)``), so editing the IAF reruns the IAF's runs and not the standard VAE's;
- the package data the closure's modules read: a non-Python file of the package counts when a
  module of the closure names it in a string constant (its file name, or its path from the
  package folder), as ``config.py`` names ``"config.schema.yaml"``.

``cli.py`` and ``__main__.py`` are no stage's dependency: they parse the command line, read
the settings file (itself an input of every rule) and call the entry module, so a new option
or a reworded help text reruns nothing. What decides a result belongs in the entry modules.
The raw-data download has no code input: its files are checked against fixed checksums.

>>> sorted(ENTRY)
['evaluate', 'figure_data', 'figures', 'prepare', 'report', 'train']
>>> any(p.endswith("fetch.py") for p in files("prepare"))
True
>>> sorted(os.path.basename(p) for p in files("train", "iaf") if "posteriors" in p)
['__init__.py', 'base.py', 'iaf.py']
"""

from __future__ import annotations

import ast
import functools
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent

#: The modules each stage's command (``python -m flowvae <command>``) hands its work to.
ENTRY = {
    "prepare": ("flowvae.data",),  # prepare
    "train": ("flowvae.train",),  # train
    "evaluate": ("flowvae.evaluate",),  # evaluate, gap-grids
    "report": (
        "flowvae.aggregate",
        "flowvae.report",
        "flowvae.selection",
    ),  # aggregate, budgets, ...
    "figures": ("flowvae.figures",),  # figure
    "figure_data": ("flowvae.figures",),  # figure-data
}


def files(stage: str, family: str | None = None) -> list[str]:
    """The package files of ``stage`` (a key of ENTRY), relative to the working folder; with
    ``family``, of the jobs of one run of that posterior family."""
    return sorted(os.path.relpath(p) for p in closure(ENTRY[stage], PACKAGE_DIR, family))


def closure(entries: Iterable[str], root: Path, discovered: str | None = None) -> set[Path]:
    """The files of the modules ``entries`` (dotted names) of the package in folder ``root``,
    of every package module they import, and of the package data those modules read. A package
    that discovers its modules contributes all of them, or with ``discovered`` only the module
    of that name (and what it imports)."""
    todo = list(entries)
    if missing := [name for name in todo if module_file(name, root) is None]:
        raise ValueError(f"no module {', '.join(missing)} in {root}")  # a renamed module?
    data = data_names(root)
    wanted = frozenset().union(*data.values())
    seen: set[str] = set()
    paths: set[Path] = set()
    while todo:
        name = todo.pop()
        path = None if name in seen else module_file(name, root)
        seen.add(name)
        if path is None:
            continue
        paths.add(path)
        found = scan(path, wanted)
        names = imported(found, name, path.name == "__init__.py")
        todo += names
        if path.name == "__init__.py" and "pkgutil" in names:  # it discovers its modules
            stems = [p.stem for p in path.parent.glob("*.py") if p != path]
            if discovered is not None:
                stems = [stem for stem in stems if stem == discovered]
            todo += [f"{name}.{stem}" for stem in stems]
        paths |= {file for file, named in data.items() if named & found.strings}
    for name in seen:  # importing a module runs its parent packages first
        parts = name.split(".")
        for i in range(1, len(parts)):
            parent = module_file(".".join(parts[:i]), root)
            if parent is not None and parent.name == "__init__.py":
                paths.add(parent)
    return paths


def module_file(name: str, root: Path) -> Path | None:
    """The file of module ``name`` of the package in ``root`` (``x/__init__.py`` for a
    package); None for another package's module or a name that is no module (a function)."""
    parts = name.split(".")
    if parts[0] != root.name:
        return None
    base = root.joinpath(*parts[1:])
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


@dataclass(frozen=True)
class Scan:
    """What one module's source says: its imports, as (level, module, names) of each import
    statement (level 0 and module None for ``import a, b.c``), and which of the strings asked
    for it holds as string constants."""

    imports: tuple[tuple[int, str | None, tuple[str, ...]], ...]
    strings: frozenset[str]


def scan(path: Path, strings: frozenset[str] = frozenset()) -> Scan:
    """The imports of the module in ``path`` and which of ``strings`` it holds (read again once
    the file is edited)."""
    return _scan(path, path.stat().st_mtime_ns, strings)


@functools.cache
def _scan(path: Path, stamp: int, strings: frozenset[str]) -> Scan:
    source = path.read_text()
    tree = ast.parse(source, str(path))
    imports = []
    for node in _statements(tree.body):
        if isinstance(node, ast.Import):
            imports.append((0, None, tuple(alias.name for alias in node.names)))
        elif isinstance(node, ast.ImportFrom):
            imports.append((node.level, node.module, tuple(a.name for a in node.names)))
    found = set()
    if any(s in source for s in strings):  # (walking every expression costs more than parsing)
        found = {
            node.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value in strings
        }
    return Scan(tuple(imports), frozenset(found))


def _statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Every statement of ``body`` and of the blocks in it (functions, classes, if, try, ...):
    where an import may be."""
    for node in body:
        yield node
        for block in ("body", "orelse", "finalbody", "handlers", "cases"):
            yield from _statements(getattr(node, block, []))


def imported(found: Scan, name: str, is_package: bool) -> list[str]:
    """Every module name that the module ``name`` (its ``scan``) may import: for ``from a
    import b``, both ``a`` and ``a.b`` (``b`` may be a module or a name defined in ``a``)."""
    here = name.split(".") if is_package else name.split(".")[:-1]
    out = []
    for level, module, names in found.imports:
        if level == 0 and module is None:  # import a, b.c
            out += names
            continue
        base = ".".join(here[: len(here) - level + 1]) if level else ""
        base = ".".join(part for part in (base, module) if part)
        out += [base, *(f"{base}.{n}" for n in names)]
    return out


def data_names(root: Path) -> dict[Path, set[str]]:
    """The package's files other than Python sources, each with the strings that name it: its
    file name and its path from the package folder."""
    return {
        p: {p.name, p.relative_to(root).as_posix()}
        for p in sorted(root.rglob("*"))
        if p.is_file()
        and p.suffix not in (".py", ".pyc")
        and "__pycache__" not in p.parts
        and not p.name.startswith(".")
    }
