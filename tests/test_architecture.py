"""The package's import graph, read from the source (``ast``, nothing imported): stages import
downwards only, no module imports a deprecated path, and no modules import each other in a circle.

The layers (also drawn in ``lightning_brats/__init__.py``)::

    cli          api                     entry points, command line and Python: may import every stage
                                         (and each other: the commands run the API's code path)
    inference    evaluation              predictor, export | metrics, scoring, reports
        \\         /
        training                         module, losses, schedules, callbacks, checkpoints
           |
        data         models              release -> cache -> samples | the network zoo
           |
        io                               atomic writes, CSV, job folders (imports nothing of ours)

What crosses a stage boundary is listed in :data:`ALLOWED`, one row per stage, and nothing else may.
The edges that point sideways or up are there on purpose and named module by module:

- training validates with the sliding window of inference (``inference.sliding_window``) and scores
  validation with evaluation's metrics, lesion-wise scores and pictures;
- inference loads checkpoints through training (``training.module``, ``training.checkpoints``) and
  asks ``training.hardware`` for the inference precision.

Function-local imports are included in the stage rules (a lazy import that runs back up is still one,
as ``prediction`` -> ``cli.summarize`` was) but left out of the cycle check: they are deliberate lazy
imports (optional dependencies such as onnx and panoptica, the CLI's dispatch of subcommands, heavy
modules loaded on first use), and they run after every module involved has finished importing.
Imports under ``if TYPE_CHECKING:`` never run and are left out of both.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_brats"
ROOT = "lightning_brats"

#: The stage of a module: the first name below ``lightning_brats`` (``cli``, ``data``, ...); the package's
#: own ``__init__`` and the top-level helpers are stage ``root`` (``configs``: where the configs are).
ROOT_MODULES = {"", "configs", "_moved"}

#: stage -> what it may import from other stages: a stage name (all of it) or a module's dotted name
#: (that module only). Imports within a stage are always allowed.
ALLOWED: dict[str, set[str]] = {
    "io": set(),
    # importing the package registers what the configs need: resolvers, and data.augment's intensity
    # defaults from the torch-free module that declares them
    "root": {"data.intensity_settings"},
    "models": set(),
    "data": {"io", "root"},
    "training": {
        "io", "root", "data", "models",
        "inference.sliding_window",                                      # whole-case validation
        "evaluation.metrics", "evaluation.lesion_metrics", "evaluation.visualize",  # validation scores, pictures
        "evaluation.registry",                                           # validation's Dice is the registry's
    },
    "evaluation": {"io", "root", "data"},
    "inference": {
        "io", "root", "data", "models",
        "training.module", "training.checkpoints",  # loading a trained network
        "training.hardware",                          # the inference precision of the device
    },
    "cli": {"io", "root", "data", "models", "training", "inference", "evaluation", "api"},
    "api": {"io", "root", "data", "models", "training", "inference", "evaluation", "cli"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def stage(name: str) -> str:
    parts = name.split(".")
    if len(parts) == 1 or (len(parts) == 2 and parts[1] in {m for m in ROOT_MODULES if m}):
        return "io" if name == f"{ROOT}.io" else "root"
    return "io" if parts[1] == "io" else parts[1]


def _type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(path: Path) -> list[tuple[str, bool]]:
    """``(module, lazy)`` for every ``lightning_brats`` module a file imports; ``lazy``: inside a function.

    ``from a.b import c`` names ``a.b.c`` when that is a module, else ``a.b``.
    """
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking_block(child):
                continue
            child_lazy = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, lazy) for a in child.names if a.name.split(".")[0] == ROOT)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and (child.module or "").split(".")[0] == ROOT:
                for alias in child.names:
                    sub = f"{child.module}.{alias.name}"
                    found.append((sub if sub in MODULES else child.module, lazy))
            visit(child, child_lazy)

    visit(ast.parse(path.read_text()), False)
    return found


def edges(include_lazy: bool) -> set[tuple[str, str]]:
    """Import edges between modules, with the packages Python initialises on the way.

    Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first: those are edges too, except
    for the importer's own enclosing packages (a package importing its submodules, and those
    submodules running inside it, is how packages work, not a circle). A module that names its own
    package explicitly (``from lightning_brats.inference import X`` inside ``inference/``) gets that
    edge: it is a circle as soon as the package's ``__init__`` imports that module.
    """
    out = set()
    for name, path in MODULES.items():
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        for target, lazy in imports(path):
            if lazy and not include_lazy:
                continue
            if target == name:
                continue
            if target not in MODULES:
                continue  # an old path (see test_the_package_never_imports_its_old_paths) or a typo
            out.add((name, target))
            parts = target.split(".")
            for i in range(1, len(parts)):
                ancestor = ".".join(parts[:i])
                if ancestor not in own and ancestor != name:
                    out.add((name, ancestor))
    return out


def test_the_graph_sees_the_known_edges():
    """The walker itself: a few edges that must be there (else the rules below would pass vacuously)."""
    found = edges(include_lazy=True)
    assert ("lightning_brats.training.module", "lightning_brats.inference.sliding_window") in found
    assert ("lightning_brats.training.module", "lightning_brats.inference") in found  # its package runs first
    assert ("lightning_brats.inference.prediction", "lightning_brats.training.module") in found
    assert ("lightning_brats.cli.eval", "lightning_brats.cli.predict") in found  # a lazy one


def test_no_import_cycles():
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for a, b in edges(include_lazy=False):
        graph[a].add(b)
    # Tarjan's strongly connected components: every component of more than one module is a circle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    assert not cycles, f"modules that import each other in a circle: {cycles}"


def test_stages_import_only_downwards():
    wrong = []
    for a, b in sorted(edges(include_lazy=True)):
        if stage(a) == stage(b):
            continue
        allowed = ALLOWED[stage(a)]
        target = b.split(".", 1)[1] if "." in b else ""
        # the package a target sits in counts as the target (importing training.module runs training/__init__)
        if stage(b) in allowed or target in allowed or any(t.startswith(target + ".") for t in allowed if target):
            continue
        wrong.append(f"{a} -> {b}")
    assert not wrong, "imports against the stage order (see ALLOWED in this file):\n" + "\n".join(wrong)


def test_only_the_entry_points_import_cli():
    wrong = [f"{a} -> {b}" for a, b in edges(include_lazy=True) if stage(b) == "cli" and stage(a) not in ("cli", "api")]
    assert not wrong, wrong


def test_the_package_never_imports_its_old_paths():
    """Every ``lightning_brats`` import names a module that exists as a file: the old flat paths
    (``lightning_brats.module``, ...; :mod:`lightning_brats._moved`) are for users and old checkpoints,
    the package itself uses the new ones and so never triggers its own deprecation warnings."""
    wrong = [f"{name} -> {target}" for name, path in MODULES.items() for target, _ in imports(path)
             if target not in MODULES]
    assert not wrong, wrong


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.count(".") <= 1 or MODULES[n].name == "__init__.py"))
def test_every_module_and_subpackage_opens_with_a_docstring(name):
    assert ast.get_docstring(ast.parse(MODULES[name].read_text())), f"{MODULES[name]} has no docstring"
