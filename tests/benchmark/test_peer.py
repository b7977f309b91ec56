"""detector.benchmark.peer and peer_report: the conversions between our Batch and torchvision's
lists (hand-made tensors), the peer's transform that keeps our images, the settings list read
from the built model, the training loop (schedule, log points, a non-finite stop), the step-time
rule and the comparison table."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch
from helpers.tiny_training import TinyBackbone

from detector import run_files
from detector.benchmark.peer import (
    PeerDetector,
    PeerTraining,
    build_peer,
    check_peer_overrides,
    detections_to_original,
    image_list,
    peer_settings,
    step_time,
    target_list,
    train_peer,
)
from detector.benchmark.peer_report import (
    RunResult,
    class_ap50,
    format_comparison,
    setting_differences,
    write_comparison,
)
from detector.errors import OptionError


def _peer(**overrides) -> PeerDetector:
    torch.manual_seed(0)
    return PeerDetector(model=build_peer(trunk=TinyBackbone(), num_classes=3,
                                         anchor_sizes=[16, 32], anchor_ratios=[0.5, 1.0, 2.0],
                                         overrides=overrides))


def _batch(*, nan: bool = False) -> dict:
    """Two images padded to 64 x 96 (the first 64 x 64), two boxes and one padding row."""
    gen = torch.Generator().manual_seed(1)
    images = torch.zeros(2, 3, 64, 96)
    images[0, :, :, :64] = torch.randn(3, 64, 64, generator=gen)
    images[1] = torch.randn(3, 64, 96, generator=gen)
    if nan:
        images[:] = float("nan")
    return {"images": images, "image_sizes": torch.tensor([[64, 64], [64, 96]]),
            "boxes": torch.tensor([[[4.0, 4.0, 30.0, 40.0], [0.0, 0.0, 0.0, 0.0]],
                                   [[10.0, 8.0, 50.0, 60.0], [60.0, 2.0, 90.0, 30.0]]]),
            "labels": torch.tensor([[1, 0], [2, 3]]),
            "box_valid": torch.tensor([[True, False], [True, True]]),
            "image_ids": torch.tensor([0, 1]), "orig_sizes": torch.tensor([[128, 128], [64, 96]]),
            "scales": torch.tensor([[0.5, 0.5], [1.0, 1.0]])}


def test_image_list_cuts_the_padding_off_as_views():
    images = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    out = image_list(images, torch.tensor([[2, 3], [4, 6]]))
    assert [tuple(i.shape) for i in out] == [(3, 2, 3), (3, 4, 6)]
    assert torch.equal(out[0], images[0, :, :2, :3]) and torch.equal(out[1], images[1])
    assert out[0].data_ptr() == images.data_ptr()  # a view, no copy


def test_target_list_keeps_the_valid_rows_and_an_image_without_boxes():
    boxes = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [0.0, 0.0, 0.0, 0.0]],
                          [[0.0, 0.0, 0.0, 0.0]] * 3])
    labels = torch.tensor([[2, 1, 0], [0, 0, 0]])
    valid = torch.tensor([[True, True, False], [False, False, False]])
    first, second = target_list(boxes, labels, valid)
    assert torch.equal(first["boxes"], boxes[0, :2]) and first["labels"].tolist() == [2, 1]
    assert second["boxes"].shape == (0, 4) and second["labels"].shape == (0,)


def test_detections_back_to_original_pixels():
    detections = [{"boxes": torch.tensor([[10.0, 20.0, 30.0, 40.0]]),
                   "scores": torch.tensor([0.9]), "labels": torch.tensor([2])},
                  {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                   "labels": torch.zeros(0, dtype=torch.long)}]
    scales = torch.tensor([[0.5, 2.0], [1.0, 1.0]])  # (sy, sx) resized / original
    first, second = detections_to_original(detections, scales)
    assert first["boxes"].tolist() == [[5.0, 40.0, 15.0, 80.0]]  # x / sx, y / sy
    assert first["scores"].tolist() == pytest.approx([0.9]) and first["labels"].tolist() == [2]
    assert second["boxes"].shape == (0, 4)
    kept = detections_to_original(detections, None)[0]
    assert kept["boxes"].tolist() == [[10.0, 20.0, 30.0, 40.0]]


def test_the_transform_neither_resizes_nor_normalises():
    peer = _peer().eval()
    images = [torch.randn(3, 40, 70), torch.randn(3, 64, 50)]
    batched, _ = peer.model.transform(images)
    assert batched.image_sizes == [(40, 70), (64, 50)]
    assert batched.tensors.shape[-2:] == (64, 96)  # padded to multiples of 32, as our collate
    assert torch.equal(batched.tensors[0, :, :40, :70], images[0])
    assert torch.equal(batched.tensors[1, :, :64, :50], images[1])


def test_forward_losses_in_training_and_detections_in_original_pixels_in_eval():
    peer, batch = _peer(), _batch()
    losses = peer.train()(batch["images"], batch["image_sizes"], batch)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness",
                           "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    peer.eval()
    with torch.no_grad():
        outputs = peer(batch["images"], batch["image_sizes"])
    resized = outputs["detections"]
    found = peer.detect(outputs, batch["scales"])
    assert len(found) == 2
    for det, raw, (h, w), (sy, sx) in zip(found, resized, batch["image_sizes"].tolist(),
                                          batch["scales"].tolist(), strict=True):
        assert torch.allclose(det["boxes"], raw["boxes"] / torch.tensor([sx, sy, sx, sy]))
        assert bool((raw["boxes"][:, 2] <= w).all() and (raw["boxes"][:, 3] <= h).all())
        assert bool(((det["labels"] >= 1) & (det["labels"] <= 3)).all())


def test_settings_are_read_from_the_built_model():
    default = _peer().model
    settings = peer_settings(default)
    assert settings["rpn_num_samples"] == str(default.rpn.fg_bg_sampler.batch_size_per_image)
    assert settings["rpn_num_samples"] == "256" and settings["roi_num_samples"] == "512"
    assert settings["rpn_post_nms_top_n (train, test)"] == "2000, 1000"
    assert settings["anchor_sizes"] == "16, 32" and settings["anchor_ratios"] == "0.5, 1, 2"
    assert settings["box_head"] == "2 fc, 1024 wide"
    assert settings["box_coder_weights (rpn; roi)"] == "1, 1, 1, 1; 10, 10, 5, 5"
    changed = _peer(rpn_batch_size_per_image=64, box_batch_size_per_image=16,
                    rpn_post_nms_top_n_test=300, box_detections_per_img=50,
                    box_score_thresh=0.2).model
    settings = peer_settings(changed)
    assert changed.rpn.fg_bg_sampler.batch_size_per_image == 64
    assert settings["rpn_num_samples"] == "64" and settings["roi_num_samples"] == "16"
    assert settings["rpn_post_nms_top_n (train, test)"] == "2000, 300"
    assert settings["max_detections"] == "50" and settings["score_threshold"] == "0.2"


@pytest.mark.parametrize("key", ["num_classes", "backbone", "min_size", "no_such_argument"])
def test_overrides_outside_the_free_arguments_are_refused(key):
    with pytest.raises(OptionError, match=f"peer_overrides.{key} ") as error:
        check_peer_overrides({key: 1})
    assert error.value.option == "peer_overrides"
    assert check_peer_overrides({"box_nms_thresh": 0.6}) == {"box_nms_thresh": 0.6}


def _optimizer(peer):
    optimizer = torch.optim.SGD(peer.parameters(), lr=0.01)
    factor = functools.partial(lambda it, total: 1.0 - it / total, total=4)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def test_training_steps_the_schedule_and_writes_a_log_point_per_period(tmp_path):
    peer = _peer()
    optimizer, scheduler = _optimizer(peer)
    before = [p.detach().clone() for p in peer.parameters()]
    done = train_peer(peer, batches=iter([_batch()] * 3), optimizer=optimizer,
                      scheduler=scheduler, device=torch.device("cpu"),
                      options=PeerTraining(iterations=3, clip_grad_norm=10.0, log_period=2,
                                           progress=False),
                      metrics_path=tmp_path / "metrics.jsonl")
    assert done.iterations == 3 and done.diverged is None and len(done.step_seconds) == 3
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * (1 - 3 / 4))
    records = run_files.read_metrics_jsonl(tmp_path / "metrics.jsonl")
    assert [r["iter"] for r in records] == [2, 3]  # every 2 steps, and the last
    assert records[0]["lr"] == pytest.approx(0.01 * (1 - 1 / 4))  # the lr of the step logged
    assert all(math.isfinite(r["loss"]) and r["sec_per_iter"] > 0 for r in records)
    assert any(not torch.equal(a, b) for a, b in zip(before, peer.parameters(), strict=True))


def test_a_non_finite_loss_stops_without_stepping():
    peer = _peer()
    optimizer, scheduler = _optimizer(peer)
    before = [p.detach().clone() for p in peer.parameters()]
    done = train_peer(peer, batches=iter([_batch(nan=True)]), optimizer=optimizer,
                      scheduler=scheduler, device=torch.device("cpu"),
                      options=PeerTraining(iterations=2, progress=False))
    assert done.iterations == 0 and "non-finite" in done.diverged and "iteration 1" in done.diverged
    assert all(torch.equal(a, b) for a, b in zip(before, peer.parameters(), strict=True))


def test_step_time_is_the_median_after_the_first_log_point():
    records = [{"sec_per_iter": 5.0}, {"sec_per_iter": 0.2}, {"AP": 0.1}, {"sec_per_iter": 0.4},
               {"sec_per_iter": 0.3}]
    assert step_time(records) == pytest.approx(0.3)
    assert step_time([{"sec_per_iter": 2.0}]) == 2.0
    assert step_time([]) is None


def _metrics(ap50_a: float) -> dict:
    curves = {"a": [ap50_a] * 101, "b": None, "c": [1.0] * 50 + [0.0] * 51}
    return {"AP": 0.5, "AP50": 0.7, "APm": None, "pr_iou50": {"precision": curves}}


def test_class_ap50_is_the_mean_precision_over_the_recall_thresholds():
    assert class_ap50(_metrics(0.25)) == {"a": pytest.approx(0.25), "b": None,
                                          "c": pytest.approx(50 / 101)}
    assert class_ap50(None) == {}


def test_the_comparison_table_and_its_json(tmp_path):
    rows = [RunResult(name="peer", folder="p", status="finished", metrics=_metrics(0.25),
                      iterations=2, sec_per_step=0.5, wall_time_s=3.0),
            RunResult(name="ours", folder="o", status="diverged", iterations=1,
                      note="non-finite loss")]
    peer, ours = {"x": "1", "y": "2"}, {"x": "1", "y": "3", "z": "4"}
    assert setting_differences(peer, ours) == [("y", "2", "3"), ("z", "-", "4")]
    text = format_comparison(rows, differences=setting_differences(peer, ours), notes=["n1"])
    lines = text.splitlines()
    head = next(line for line in lines if line.startswith("| run |"))
    assert "| AP50 a | AP50 b | AP50 c |" in head and head.count("|") == 19  # 18 columns
    assert "| peer | finished | 0.500 | 0.700 | n/a |" in text
    assert "| 0.250 | n/a | 0.495 | 0.500 | 2 | 3.0 |" in text
    assert "| ours | diverged | n/a |" in text and "- ours: non-finite loss" in text
    assert "| y | 2 | 3 |" in text and "- n1" in text
    write_comparison(tmp_path, rows, peer_settings=peer, ours_settings=ours, notes=["n1"],
                     extra={"seed": 0})
    record = json.loads((tmp_path / "comparison.json").read_text())
    assert [r["name"] for r in record["runs"]] == ["peer", "ours"]
    assert record["runs"][0]["metrics"]["class_AP50"]["a"] == pytest.approx(0.25)
    assert "pr_iou50" not in record["runs"][0]["metrics"] and record["seed"] == 0
    assert (tmp_path / "comparison.md").read_text() == text


def test_many_classes_go_to_a_second_table():
    curves = {f"class{i}": [0.5] * 101 for i in range(12)}
    row = RunResult(name="peer", folder="p", status="finished",
                    metrics={"AP": 0.1, "pr_iou50": {"precision": curves}})
    text = format_comparison([row], differences=[])
    assert "AP50 class0" not in text and "| class11 | 0.500 |" in text
