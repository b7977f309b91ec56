"""Run a tool's command line in this process, as ``python tools/<script> ARGS...`` would.

    from helpers.run_tool import run_tool
    done = run_tool("train_net.py", ["foo=1"], cwd=tmp_path)
    assert done.returncode == 2 and done.stderr == "error: ...\n"

The script runs as ``__main__`` (its ``if __name__ == "__main__":`` block included, so the
command-line checks before Hydra and Hydra's own parsing, run directory and logging are the real
ones), with ``sys.argv`` set to ``[<script path>, *args]``. What it prints to ``sys.stdout`` and
``sys.stderr`` (Hydra's console log handlers included) is captured; its exit code is that of
``sys.exit`` (0 when it returns, 1 with the traceback on stderr when an exception escapes, as
Python itself does). It returns a ``subprocess.CompletedProcess`` like
``subprocess.run(..., capture_output=True, text=True)``, without the seconds a new interpreter
spends importing torch. Afterwards the process is as before: ``sys.argv``, ``sys.path``, the
environment, the working directory, the loggers, torch's float32 matmul precision, thread count
and CPU random state, and Hydra's global state (a test's open ``initialize_config_dir``
included) are restored.

Not the same as a real process: output written to the file descriptors directly (C code, a
warning printed while a module is first imported) is not captured, and the tool shares this
process's torch settings (one thread, see tests/conftest.py). Keep one real subprocess test per tool
for those. Under a tracer (a debugger, coverage) Hydra re-raises the errors it would print,
and run_tool reports them as a traceback with exit code 1. ``env`` sets (a string) or unsets
(None) environment variables for the run; ``HYDRA_FULL_ERROR`` is unset unless ``env`` names
it, as the subprocess tests do. ``script`` is a name in tools/ or an absolute path.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import runpy
import subprocess
import sys
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

TOOLS = Path(__file__).resolve().parents[2] / "tools"

__all__ = ["run_tool"]


@contextlib.contextmanager
def _environment(env: Mapping[str, str | None]) -> Iterator[None]:
    saved = dict(os.environ)
    try:
        for name, value in {"HYDRA_FULL_ERROR": None, **env}.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def _logging_restored() -> Iterator[None]:
    """Undo what Hydra's logging set-up does to the loggers (handlers, levels, propagation)."""
    loggers = [logging.getLogger(), *(logger for logger in logging.Logger.manager.loggerDict.values()
                                      if isinstance(logger, logging.Logger))]
    saved = {id(lg): (lg, lg.level, list(lg.handlers), lg.propagate, lg.disabled)
             for lg in loggers}
    try:
        yield
    finally:
        everyone = [logging.getLogger(), *(logger for logger in
                                           logging.Logger.manager.loggerDict.values()
                                           if isinstance(logger, logging.Logger))]
        for logger in everyone:
            kept = saved.get(id(logger))
            for handler in logger.handlers:
                if kept is None or handler not in kept[2]:
                    handler.close()  # e.g. the FileHandler of the run's <tool>.log
            if kept is None:
                logger.handlers.clear()
                logger.setLevel(logging.NOTSET)
                logger.propagate, logger.disabled = True, False
            else:
                _, logger.level, logger.handlers[:], logger.propagate, logger.disabled = kept


@contextlib.contextmanager
def _process_state(cwd: Path | None) -> Iterator[None]:
    argv, path, here = sys.argv[:], sys.path[:], Path.cwd()
    matmul, threads, rng = (torch.get_float32_matmul_precision(), torch.get_num_threads(),
                            torch.get_rng_state())
    hydra_config, hydra = HydraConfig.instance().cfg, GlobalHydra.instance().hydra
    try:
        GlobalHydra.instance().clear()  # e.g. a test's open initialize_config_dir(...)
        if cwd is not None:
            os.chdir(cwd)
        yield
    finally:
        os.chdir(here)
        sys.argv[:], sys.path[:] = argv, path
        torch.set_float32_matmul_precision(matmul)
        torch.set_num_threads(threads)
        torch.set_rng_state(rng)
        GlobalHydra.instance().clear()
        GlobalHydra.instance().hydra = hydra
        HydraConfig.instance().cfg = hydra_config


def _exit_code(code: object) -> int:
    """What the interpreter makes of ``sys.exit(code)``."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def run_tool(script: str, args: list[str], *, cwd: Path | None = None,
             env: Mapping[str, str | None] | None = None) -> subprocess.CompletedProcess:
    """``python tools/<script> *args`` in this process (see the module docstring)."""
    path = TOOLS / script
    out, err = io.StringIO(), io.StringIO()
    with _environment(env or {}), _process_state(cwd), _logging_restored(), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        sys.argv[:] = [str(path), *args]
        try:
            runpy.run_path(str(path), run_name="__main__")
            code = 0
        except SystemExit as stop:
            code = _exit_code(stop.code)
        except Exception:  # noqa: BLE001 -- as the interpreter does: a traceback and exit 1
            traceback.print_exc()
            code = 1
    return subprocess.CompletedProcess([sys.executable, str(path), *args], code, out.getvalue(),
                                       err.getvalue())
