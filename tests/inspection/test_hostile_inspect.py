"""tools/inspect_model.py on a checkpoint someone else wrote: its ``config.name`` never chooses
where the report goes (``/../..`` stays one harmless folder-name component), names from it reach
the terminal and report.md escaped, layer names that are broken mathtext are drawn as written,
and a link already in the report folder is replaced, not written through."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.load_file import load_tool
from helpers.tiny_checkpoint import TINY_CLASSES, tiny_model_spec
from hydra import compose, initialize_config_dir

from detector.checkpoint import CheckpointError
from detector.inspection.report import inspect_state, summary_table, write_report

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _state_dict() -> dict[str, torch.Tensor]:
    """A conv + BN of the backbone and two linear layers whose names are not what torch would
    ever write: broken mathtext and a terminal escape."""
    torch.manual_seed(0)
    return {"backbone.body.0.weight": torch.randn(4, 3, 3, 3),
            "backbone.body.1.weight": torch.ones(4), "backbone.body.1.bias": torch.zeros(4),
            "backbone.body.1.running_mean": torch.zeros(4),
            "backbone.body.1.running_var": torch.ones(4),
            "roi_head.$\\frac.weight": torch.randn(2, 4),
            "roi_head.a$b\x1b[2J.weight": torch.randn(2, 2)}


def _checkpoint(path: Path, name: str, model=None) -> Path:
    """A plain dict, as torch.save writes it: a valid description, a hostile name."""
    torch.save({"model": _state_dict() if model is None else model, "class_names": list(TINY_CLASSES),
                "label_to_cat_id": {i + 1: i + 1 for i in range(len(TINY_CLASSES))},
                "config": {"name": name, "model": tiny_model_spec(),
                           "dataset": {"name": "shapes", "min_size": 64, "max_size": 64}}}, path)
    return path


def _run_tool(a: Path, b: Path):
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="inspect", overrides=[
            f"checkpoint={a}", f"checkpoint_b={b}", "num_images=0", "device=cpu"])
    return load_tool("inspect_model.py").run(cfg)


@pytest.mark.parametrize("name", ["/../../../../escaped", ".."])
def test_a_checkpoint_name_never_chooses_where_the_report_goes(tmp_path, name, capsys):
    runs = tmp_path / "deep" / "er" / "runs"
    runs.mkdir(parents=True)
    a = _checkpoint(runs / "a.pth", "ce")
    b = _checkpoint(runs / "b.pth", name)
    report = _run_tool(a, b)
    assert report.parent.parent == runs and report.parent.name.startswith("a_inspect_vs_")
    assert ".." not in report.parent.name and "/" not in report.parent.name[len("a_inspect"):]
    assert [p.name for p in runs.iterdir() if p.is_dir()] == [report.parent.name]
    assert not list(tmp_path.rglob("escaped*")) and not (tmp_path / "report.md").exists()


def test_names_from_the_checkpoint_are_escaped_and_drawn_as_written(tmp_path, capsys):
    a = _checkpoint(tmp_path / "a.pth", "ce")
    b = _checkpoint(tmp_path / "b.pth", "\x1b]0;pwned\x07focal")
    report = _run_tool(a, b)
    printed = capsys.readouterr().out
    text = report.read_text()
    for shown in (printed, text):
        assert "\x1b" not in shown and "\x07" not in shown
    assert "\\x1b]0;pwned\\x07focal" in printed and "\\x1b]0;pwned\\x07focal" in text
    assert "$\\frac" in text and "a$b\\x1b[2J" in text  # the layer names, escaped
    figures = sorted(p.name for p in report.parent.glob("*.png"))
    assert "weights_roi_head.png" in figures and "bn_gamma.png" in figures
    for figure in figures:
        assert (report.parent / figure).read_bytes().startswith(PNG_MAGIC)


def test_links_in_the_report_folder_are_replaced_not_written_through(tmp_path):
    victim = tmp_path / "victim.md"
    victim.write_text("keep me")
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.md").symlink_to(victim)
    (out / "bn_gamma.png").symlink_to(victim)
    run = inspect_state(_state_dict(), label="a", source="a.pth")
    path = write_report([run], out)
    assert victim.read_text() == "keep me"
    assert not path.is_symlink() and path.read_text().startswith("# Model inspection")
    assert (out / "bn_gamma.png").read_bytes().startswith(PNG_MAGIC)


def test_a_block_name_is_one_file_name(tmp_path):
    run = inspect_state({"backbone.x/..\x1b/..weight": torch.randn(2, 2),
                         "a\x1b[31m.weight": torch.randn(2, 2)}, label="a")
    table = summary_table([run])
    assert "\x1b" not in table and "a\\x1b[31m" in table
    write_report([run], tmp_path / "out")
    written = sorted(p.relative_to(tmp_path / "out").as_posix()
                     for p in (tmp_path / "out").rglob("*"))
    assert written == ["report.md", "weights_a_31m.png", "weights_backbone.x.png"]


def test_empty_and_non_finite_weights_are_reported_not_a_crash(tmp_path):
    state = _state_dict()
    state["backbone.body.0.weight"][0, 0, 0, 0] = float("nan")
    state["backbone.body.0.weight"][1, 0, 0, 0] = float("inf")
    state["backbone.body.1.weight"][:] = float("nan")  # every gamma: nothing to draw
    state["rpn_head.conv.weight"] = torch.empty(0, 4, 3, 3)
    a = _checkpoint(tmp_path / "a.pth", "ce", model=state)
    report = _run_tool(a, _checkpoint(tmp_path / "b.pth", "focal"))
    assert "| backbone.body |" in report.read_text()
    assert "rpn_head.conv" not in report.read_text()  # no weights: no layer


@pytest.mark.parametrize("model", [[torch.ones(2)], {"x.weight": [1.0, 2.0]}])
def test_a_model_that_is_no_state_dict_is_one_line(tmp_path, model):
    a = _checkpoint(tmp_path / "a.pth", "ce", model=model)
    with pytest.raises(CheckpointError, match=r"a.pth: its 'model' is not a state dict"):
        _run_tool(a, _checkpoint(tmp_path / "b.pth", "focal"))
