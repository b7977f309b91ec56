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
    "fileio": 0, "errors": 0,
    # 1: tensor primitives, file formats and run settings; data and drawing
    "ops": 1, "checkpoint": 1, "runtime": 1, "data": 1, "visualize": 1,
    # ... and how a file someone else wrote is read and its names shown (studies, inspection)
    "untrusted": 1,
    # 2: the model and its evaluation
    "modeling": 2, "evaluation": 2,
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
