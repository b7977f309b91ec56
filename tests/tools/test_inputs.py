"""Inputs of the tools as a user types them (issue 19, part 2): paths holding Hydra syntax (a
sweep job's folder ``experiment=focal,optimizer.lr=0.001``), the commands the tools print, and
bad values of the predict/serve/export keys. In process through the tools' ``main`` where the
command line does not matter; one real subprocess for the command line itself."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.load_file import load_tool
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from detector_cli import cli as cli_module
from detector_cli import train

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TOOLS = PROJECT_ROOT / "tools"
TOOL_CONFIGS = ("eval", "inspect", "predict", "export", "serve", "train")
SWEEP_JOB = "experiment=focal,optimizer.lr=0.001"
# names Hydra's grammar reads as syntax: = , spaces, quotes, brackets, a backslash before a quote
AWKWARD = [SWEEP_JOB, "a b", "it's", 'say "hi"', "[x]", "{y}", "back\\'slash", "end\\", "1.5"]


@pytest.fixture(scope="module")
def cli():
    return cli_module


@pytest.fixture(scope="module")
def config():
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "configs"), version_base="1.3"):
        yield lambda name, overrides: compose(name, overrides=overrides)


def _path_keys(cfg: DictConfig, cli, prefix: str = "") -> list[str]:
    """Every leaf key of ``cfg`` that the tools treat as a path (``cli.is_path_key``)."""
    keys = []
    for key in cfg:
        full = f"{prefix}{key}"
        value = cfg._get_node(key)
        if isinstance(value, DictConfig):
            keys += _path_keys(value, cli, f"{full}.")
        elif cli.is_path_key(full):
            keys.append(full)
    return keys


@pytest.mark.parametrize("text", AWKWARD)
def test_hydra_quote_reads_back_exactly(cli, text):
    parsed = OverridesParser.create().parse_override(f"key={cli.hydra_quote(text)}")
    assert parsed.value() == text and not parsed.is_sweep_override()


def test_every_path_key_of_every_tool_takes_a_sweep_job_path(cli, config, tmp_path):
    for name in TOOL_CONFIGS:
        keys = _path_keys(config(name, []), cli)
        assert keys, name
        for folder in AWKWARD:  # every path key of the tool at once, each with its own path
            paths = {key: str(tmp_path / folder / key / "final.pth") for key in keys}
            cfg = config(name, cli.quote_path_overrides([f"{k}={p}" for k, p in paths.items()]))
            assert {key: OmegaConf.select(cfg, key) for key in keys} == paths, name


def test_other_values_are_left_to_hydra(cli):
    args = ["-m", "seed=0,1", "checkpoint=null", "resume=true", "input=photos/*.jpg",
            "checkpoint='already=quoted'", "output_dir=${hydra:runtime.cwd}/x", "experiment=focal"]
    assert cli.quote_path_overrides(args) == args


def test_check_command_line_quotes_sys_argv(cli, tmp_path, monkeypatch):
    path = str(tmp_path / SWEEP_JOB / "final.pth")
    monkeypatch.setattr(sys, "argv", ["eval.py", f"checkpoint={path}", "batch_size=2"])
    checked = []  # (Hydra is initialised by the config fixture: the composition is tested above)
    monkeypatch.setattr(cli, "check_overrides", lambda args, config_name: checked.append(args))
    cli.check_command_line("eval")
    assert sys.argv == ["eval.py", f"checkpoint={cli.hydra_quote(path)}", "batch_size=2"]
    assert checked == [sys.argv[1:]]


def _pasted(command: str, tool: str, cli) -> list[str]:
    """The overrides Hydra gets when ``command`` (printed by a tool) is pasted into a shell."""
    words = shlex.split(command)
    return cli.quote_path_overrides(words[words.index(f"tools/{tool}") + 1:])


def test_printed_commands_paste_back(cli, config, tmp_path, caplog):
    run_dir = tmp_path / "multirun" / SWEEP_JOB / "it's here"
    checkpoint = run_dir / "checkpoints" / "final.pth"
    (run_dir / "checkpoints").mkdir(parents=True)
    summary = {"metrics": None, "iterations": 3, "wall_time": 1.0, "skipped_steps": 0}
    with caplog.at_level(logging.INFO):
        train.report(summary, checkpoint, run_dir)
    hint = next(r.getMessage() for r in caplog.records if "evaluate it with" in r.getMessage())
    command = hint.split("evaluate it with: ", 1)[1]
    assert config("eval", _pasted(command, "eval.py", cli)).checkpoint == str(checkpoint)
    resume = train.resume_command(OmegaConf.create({"output_dir": str(run_dir)}))
    pasted = config("train", _pasted(resume, "train_net.py", cli))
    assert pasted.output_dir == str(run_dir) and pasted.resume is True


def test_eval_command_line_takes_a_sweep_job_path(tmp_path):
    """The real command line: the path reaches the tool intact (a corrupt file there, so the
    tool's own one-line error names it, instead of Hydra's "mismatched input '='")."""
    checkpoint = tmp_path / "multirun" / SWEEP_JOB / "checkpoints" / "final.pth"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"not a checkpoint")
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", OMP_NUM_THREADS="1")
    env.pop("HYDRA_FULL_ERROR", None)
    result = subprocess.run([sys.executable, str(TOOLS / "eval.py"), f"checkpoint={checkpoint}"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert str(checkpoint) in line and "could not parse" not in line, line


def _exits_2(main, cfg, capsys, text: str) -> str:
    """``main(cfg)`` exits with code 2 and one line on stderr holding ``text``."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(cfg)
    (line,) = capsys.readouterr().err.strip("\n").split("\n")
    assert info.value.code == 2 and line.startswith("error: ") and text in line, line
    return line


def test_predict_never_writes_over_its_inputs(config, tmp_path, capsys):
    import cv2
    import numpy as np

    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.zeros((16, 16, 3), np.uint8))
    before = (folder / "a.png").read_bytes()
    main = load_tool("predict.py").main
    for output, text in ((folder, "inside the input folder"),
                         (folder / "out", "inside the input folder")):
        # refused before any model is looked for (there is none under outputs_root)
        _exits_2(main, config("predict", [f"input={folder}", f"output={output}",
                                          f"outputs_root={tmp_path / 'none'}"]), capsys, text)
    _exits_2(main, config("predict", [f"input={folder / 'a.png'}", f"output={folder}",
                                      f"outputs_root={tmp_path / 'none'}"]), capsys,
             "would write over the input file")
    assert (folder / "a.png").read_bytes() == before and sorted(folder.iterdir()) == [
        folder / "a.png"]


NO_CUDA = [] if torch.cuda.is_available() else [("device=cuda", "CUDA is not available")]
BAD_VALUES = {
    "predict": [("min_score=abc", "min_score must lie in [0, 1], got 'abc'"),
                ("min_score=nan", "min_score must lie in [0, 1], got nan"),
                ("min_score=1.5", "min_score must lie in [0, 1]"),
                ("batch_size=0", "batch_size must be a positive integer"),
                ("backend=tensorflow", "backend must be torch or onnxruntime"),
                ("precision=fp8", "precision must be auto, fp32, bf16 or fp16"),
                ("progress=maybe", "progress must be true or false"),
                ("checkpoint=true", "checkpoint must be a path, got True"),
                ("device=gpu", "device must be auto, cpu, cuda or cuda:N"),
                (f"device=cuda:{torch.cuda.device_count()}", "CUDA")] + NO_CUDA,
    "export": [("height=abc", "height must be a positive integer"),
               ("width=0", "width must be a positive integer"),
               ("output=false", "output must be a path")],
    "serve": [("min_score=abc", "min_score must lie in [0, 1], got 'abc'"),
              ("display_min_score=nan", "display_min_score must lie in [0, 1], got nan"),
              ("max_megapixels=nan", "max_megapixels must be a positive number, got nan"),
              ("max_upload_mb=inf", "max_upload_mb must be a positive number, got inf"),
              ("threads=0", "threads must be an integer >= 1"),
              ("num_samples=-1", "num_samples must be an integer >= 0"),
              ("precision=fp8", "precision must be auto, fp32, bf16 or fp16")] + NO_CUDA,
}


@pytest.mark.parametrize(("tool", "override", "text"), [
    (tool, override, text) for tool, cases in BAD_VALUES.items() for override, text in cases])
def test_bad_values_are_one_line_before_any_work(tool, override, text, config, tiny_checkpoint,
                                                 tmp_path, capsys):
    main = load_tool(f"{tool}.py").main
    given = {"predict": [f"input={tmp_path}"], "export": [], "serve": ["port=0"]}[tool]
    cfg = config(tool, [*given, f"checkpoint={tiny_checkpoint}", override])
    _exits_2(main, cfg, capsys, text)
    assert sorted(tmp_path.iterdir()) == []  # nothing written, no output folder


def test_a_failed_start_leaves_no_run_folder(config, tmp_path, capsys):
    main = load_tool("train_net.py").main
    started = tmp_path / "outputs" / "ce_end_to_end" / "2026-01-01_00-00-00"
    kept = tmp_path / "outputs" / "ce_end_to_end" / "earlier"  # a run to resume: never removed
    for run_dir in (started, kept):  # what Hydra writes before the task function runs
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / ".hydra" / "config.yaml").write_text("{}")
        (run_dir / "train_net.log").write_text("")
    (kept / "checkpoints").mkdir()
    for run_dir in (started, kept):
        _exits_2(main, config("train", ["device=gpu", f"output_dir={run_dir}"]), capsys,
                 "device must be")
    assert not started.exists() and kept.is_dir() and (kept / "checkpoints").is_dir()


def test_a_bad_device_on_the_command_line_leaves_no_outputs(tmp_path):
    """The real start: Hydra makes outputs/<name>/<date>/ before the tool runs."""
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", OMP_NUM_THREADS="1")
    env.pop("HYDRA_FULL_ERROR", None)
    result = subprocess.run([sys.executable, str(TOOLS / "train_net.py"), "device=gpu"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "device must be" in result.stderr, result.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == [Path("outputs")]


def test_resume_true_over_only_unreadable_checkpoints_says_so(config, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "iter_0000200.pth").write_bytes(b"cut short")
    main = load_tool("train_net.py").main
    line = _exits_2(main, config("train", ["resume=true", f"output_dir={run}"]), capsys,
                    "all 1 iter_*.pth in")
    assert "unreadable" in line and "holds no iter_" not in line
    assert (run / "checkpoints" / "iter_0000200.pth").is_file()  # the run folder stays
