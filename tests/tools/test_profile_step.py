"""tools/profile_step.py (detector_cli.profile): operator groups by hand, and a real (tiny)
profile in process."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from helpers.run_tool import run_tool

from detector.data import generate_shapes_dataset
from detector_cli import profile as profile_step

TINY = ["dataset.num_train=8", "dataset.num_val=4", "dataset.image_size=64", "dataset.min_size=64",
        "dataset.max_size=64", "batch_size=2", "num_workers=0", "device=cpu"]


@pytest.mark.parametrize(("name", "group"), [
    ("aten::convolution_backward", "conv backward"),
    ("aten::mkldnn_convolution", "conv forward"),
    ("aten::native_batch_norm_backward", "batch norm"),
    ("torchvision::roi_pool", "RoI pooling"),
    ("GeneratedBackwardFor_torchvision_roi_pool_default", "RoI pooling"),
    ("aten::mm", "matrix products (linear, RPN/box heads)"),
    ("aten::threshold_backward", "ReLU, max-pool"),
    ("aten::_foreach_add_", "optimiser, gradient norm"),
    ("torchvision::nms", "NMS, top-k, sort"),
    ("enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__", "waiting for data"),
    ("aten::copy_", "copies, layout, allocation"),
    ("aten::add_", "other (elementwise, indexing, losses)"),
])
def test_group_of(name, group):
    assert profile_step.group_of(name) == group


def test_operator_groups_are_per_step_and_sorted():
    events = [SimpleNamespace(key="aten::mm", self_cpu_time_total=4000.0),  # microseconds
              SimpleNamespace(key="aten::convolution_backward", self_cpu_time_total=10000.0),
              SimpleNamespace(key="aten::addmm", self_cpu_time_total=2000.0),
              SimpleNamespace(key="aten::empty", self_cpu_time_total=0.0)]
    groups, ops = profile_step.operator_groups(events, steps=2)
    assert groups == {"conv backward": 5.0, "matrix products (linear, RPN/box heads)": 3.0}
    assert list(groups) == ["conv backward", "matrix products (linear, RPN/box heads)"]
    assert ops == [("aten::convolution_backward", 5.0), ("aten::mm", 2.0), ("aten::addmm", 1.0)]


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    return generate_shapes_dataset(root=tmp_path_factory.mktemp("profile") / "shapes",
                                   num_train=8, num_val=4, image_size=64)


def test_a_tiny_profile_prints_seconds_and_groups(shapes_root, tmp_path):
    done = run_tool("profile_step.py", ["--warmup", "1", "--timed", "2", "--profiled", "1",
                                        "--top", "3", f"dataset.root={shapes_root}", *TINY],
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "s/it (timed, 2 steps): median" in out and "s/it (profiled, 1 steps)" in out
    assert "CPU time per step by operator group" in out and "conv backward" in out
    assert "the 3 costliest operators" in out
    assert not list(tmp_path.iterdir())  # the run lived in a temporary folder


def test_more_steps_than_the_run_has_is_one_line(shapes_root, tmp_path):
    done = run_tool("profile_step.py", ["--timed", "5", f"dataset.root={shapes_root}",
                                        "schedule.iterations=4", *TINY], cwd=tmp_path)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: the run has 4 iterations, fewer than the 14 steps")


def test_timing_alone_runs_no_profiler(shapes_root, tmp_path):
    done = run_tool("profile_step.py", ["--warmup", "0", "--timed", "2", "--profiled", "0",
                                        f"dataset.root={shapes_root}", *TINY], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "s/it (timed, 2 steps)" in done.stdout and "operator group" not in done.stdout
