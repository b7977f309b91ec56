"""The package's layers (docs/design.md): imports only point down, and using a model stays light.

Each top-level module or package of ``detector`` sits on one layer; a module may import its own
package and anything on a lower layer, never a neighbour on its own layer or anything above.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "detector"

LAYERS: dict[str, int] = {
    # 0: how a file is written (atomically, following the umask), for the file formats above it;
    # the base of the errors that are the user's to fix
    "fileio": 0, "errors": 0, "ops": 0,
    # 1: tensor primitives, file formats and run settings; data and drawing
    "checkpoint": 1, "runtime": 1, "data": 1, "visualize": 1,
    # ... and how a file someone else wrote is read and its names shown (studies, inspection)
    "untrusted": 1,
    # 2: the model and its evaluation; a run folder's files (read with untrusted's readers)
    "modeling": 2, "evaluation": 2, "run_files": 2,
    # 3: using a trained model, looking into one or into run folders (studies), benchmarking one
    "predict": 3, "inspection": 3, "benchmark": 3, "study": 3,
    # 4: training and the web demo
    "engine": 4, "web": 4,
}


def _unit(module: str) -> str | None:
    """``detector.ops.boxes`` -> ``ops``; None outside the package or for the package root."""
    parts = module.split(".")
    return parts[1] if parts[0] == "detector" and len(parts) > 1 else None


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "detector":
                names += [f"detector.{alias.name}" for alias in node.names]
            else:
                names.append(node.module)
    return names


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out.append((".".join(parts).removesuffix(".__init__"), path))
    return out


def test_every_unit_has_a_layer():
    units = {_unit(name) for name, _ in _modules()} - {None}
    assert units == set(LAYERS), "add new top-level modules to LAYERS (and docs/design.md)"


@pytest.mark.parametrize(("name", "path"), _modules(), ids=[n for n, _ in _modules()])
def test_imports_point_down(name, path):
    unit = _unit(name)
    if unit is None:
        return
    upward = [target for target in _imports(path)
              if _unit(target) not in (None, unit) and LAYERS[_unit(target)] >= LAYERS[unit]]
    assert not upward, f"{name} (layer {LAYERS[unit]}) imports {upward}: imports must point down"


def test_the_library_never_imports_hydra():
    offenders = [name for name, path in _modules()
                 if any(t.split(".")[0] in ("hydra", "omegaconf") for t in _imports(path))]
    assert not offenders, f"only tools/ may import Hydra/OmegaConf: {offenders}"


def test_using_a_model_imports_neither_training_nor_plotting():
    """Serving or exporting a model must not pull in the training engine or matplotlib."""
    code = ("import sys, detector.predict.predictor, detector.predict.files, "
            "detector.predict.onnx_export, detector.predict.onnx_predictor, detector.web; "
            "print(sorted({m.split('.')[0] if not m.startswith('detector.') else "
            "'.'.join(m.split('.')[:2]) for m in sys.modules}))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=PACKAGE.parent).stdout
    for heavy in ("detector.engine", "detector.study", "matplotlib", "hydra", "tensorboard"):
        assert f"'{heavy}'" not in loaded, f"{heavy} is imported by the predict/web path"
    assert "'detector.predict'" in loaded  # the probe itself ran


def _import_graph() -> dict[str, set[str]]:
    """Module -> the ``detector`` modules it names, at module level or inside a function
    (``from pkg import mod`` names the submodule ``pkg.mod``, ``from pkg import name`` the
    package ``pkg``)."""
    modules = dict(_modules())
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in modules else node.module)
        graph[name] = {target for target in found if target in modules and target != name}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module, each sorted."""
    reach = {}
    for start in graph:
        seen, todo = set(), [start]
        while todo:
            for target in graph[todo.pop()] - seen:
                seen.add(target)
                todo.append(target)
        reach[start] = seen
    circles = {tuple(sorted(m for m in reach[start] if start in reach[m]))
               for start in graph if start in reach[start]}
    return sorted(list(c) for c in circles)


def test_no_import_circle_even_inside_a_package():
    """No module imports, even inside a function, a module that imports it back (directly or
    through others): types and measurements below, what renders them above, drivers on top."""
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    circles = _circles(_import_graph())
    assert not circles, "import circles: " + "; ".join(" <-> ".join(c) for c in circles)


TOOLS = PACKAGE.parent / "tools"
CLI_PACKAGE = PACKAGE.parent / "detector_cli"  # the Hydra side, installed beside the library


def _cli_modules() -> dict[str, Path]:
    return {".".join(path.relative_to(CLI_PACKAGE.parent).with_suffix("").parts)
            .removesuffix(".__init__"): path for path in sorted(CLI_PACKAGE.rglob("*.py"))}


def test_tools_are_shims_and_detector_cli_sits_above_the_library():
    """tools/*.py import installed packages only: no ``sys.path`` edit, no other tool (what
    they share is ``detector_cli``). ``detector_cli`` imports ``detector``, never a tool; no
    module of ``detector`` imports ``detector_cli``; no import circle inside ``detector_cli``."""
    tools = {path.stem: path for path in sorted(TOOLS.glob("*.py"))}
    assert {"train_net", "eval", "profile_step", "soak"} <= set(tools)  # the probe sees them
    for stem, path in tools.items():
        assert "sys.path" not in path.read_text(), f"tools/{stem}.py edits sys.path"
        siblings = {target.split(".")[0] for target in _imports(path)} & set(tools)
        assert not siblings, f"tools/{stem}.py imports the tool(s) {sorted(siblings)}"
    cli = _cli_modules()
    assert {"detector_cli.cli", "detector_cli.train", "detector_cli.sweep"} <= set(cli)
    for name, path in cli.items():
        tools_named = {target.split(".")[0] for target in _imports(path)} & set(tools)
        assert not tools_named, f"{name} imports the tool(s) {sorted(tools_named)}"
    upward = [name for name, path in _modules()
              if any(target.split(".")[0] == "detector_cli" for target in _imports(path))]
    assert not upward, f"{upward} import detector_cli: the library stays below its Hydra side"
    graph = {name: {target for target in _imports(path) if target in cli and target != name}
             for name, path in cli.items()}
    assert not _circles(graph), f"import circles in detector_cli: {_circles(graph)}"
