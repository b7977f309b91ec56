"""Import a Python file as a module by path (not a test module).

``tools/`` is no package, so tests load a tool's script (``load_tool("eval.py")``: its
``main``) or another file by path with this. What the tools share is the installed
``detector_cli`` package: tests import that by name; shared test code lives in ``tests/helpers/``
(``from helpers.load_file import load_tool``).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def load_file(path: Path, name: str, *, register: bool = False) -> ModuleType:
    """Execute ``path`` as the module ``name``.

    Args:
        register: put the module in ``sys.modules`` under ``name`` (before executing it, as an
            import does), so that other modules, pickling and dataclasses find it.
    """
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_tool(script: str, **kwargs) -> ModuleType:
    """``tools/<script>`` as the module ``detector_tools_<stem>`` (see ``load_file``)."""
    return load_file(TOOLS / script, f"detector_tools_{Path(script).stem}", **kwargs)
