"""Target assignment for a whole batch: torchvision's per-image path as the reference, sampling,
padding, proposals, and (with CUDA) no host synchronisation."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder as TvBoxCoder
from torchvision.models.detection._utils import Matcher as TvMatcher
from torchvision.ops import box_iou as tv_box_iou

from detector.ops.anchors import AnchorGenerator
from detector.ops.boxes import BoxCoder
from detector.ops.matcher import Matcher
from detector.ops.targets import assign_targets

FEATURE = (12, 16)  # a 192 x 256 image at stride 16


def rpn_matcher() -> Matcher:
    return Matcher(thresholds=(0.3, 0.7), labels=(0, -1, 1), allow_low_quality_matches=True)


def make_batch(seed: int, counts: list[int], *, max_gt: int = 6):
    """Padded ground truth, valid rows first: boxes (B, G, 4), labels (B, G) 1..5, valid (B, G)."""
    gen = torch.Generator().manual_seed(seed)
    batch = len(counts)
    xy = torch.rand(batch, max_gt, 2, generator=gen) * torch.tensor([200.0, 150.0])
    wh = 20 + torch.rand(batch, max_gt, 2, generator=gen) * 120
    valid = torch.arange(max_gt)[None, :] < torch.tensor(counts)[:, None]
    boxes = torch.cat((xy, xy + wh), dim=-1) * valid[..., None]
    labels = torch.randint(1, 6, (batch, max_gt), generator=gen) * valid
    return boxes, labels, valid


def torchvision_reference(anchors, boxes, labels, valid, weights):
    """Per-image loop over torchvision's Matcher and BoxCoder: (labels, deltas) per image."""
    matcher = TvMatcher(0.7, 0.3, allow_low_quality_matches=True)
    coder = TvBoxCoder(weights=weights)
    out = []
    for b in range(boxes.shape[0]):
        gt, cls = boxes[b][valid[b]], labels[b][valid[b]]
        image_labels = torch.zeros(anchors.shape[0], dtype=torch.long)
        deltas = torch.zeros(anchors.shape[0], 4)
        if len(gt):
            match = matcher(tv_box_iou(gt, anchors))
            fg = match >= 0
            image_labels[fg] = cls[match[fg]]
            image_labels[match == TvMatcher.BETWEEN_THRESHOLDS] = -1
            deltas[fg] = coder.encode_single(gt[match[fg]], anchors[fg])
        out.append((image_labels, deltas))
    return out


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_dense_assignment_matches_torchvision_per_image(weights):
    """Every box overlaps some anchor, where torchvision's low-quality rule agrees with ours."""
    anchor_gen = AnchorGenerator(sizes=(32, 64, 128), stride=16)
    anchors = anchor_gen.grid_anchors(FEATURE)
    boxes, labels, valid = make_batch(0, [4, 0, 6, 1])
    out = assign_targets(anchors, boxes, valid, matcher=rpn_matcher(),
                         box_coder=BoxCoder(weights=weights), gt_labels=labels)
    num_anchors = anchors.shape[0]
    assert out.labels.shape == (4, num_anchors) and out.deltas.shape == (4, num_anchors, 4)
    for b, (ref_labels, ref_deltas) in enumerate(
        torchvision_reference(anchors, boxes, labels, valid, weights)
    ):
        assert torch.equal(out.labels[b], ref_labels)
        torch.testing.assert_close(out.deltas[b], ref_deltas, rtol=1e-4, atol=1e-4)
    assert (out.labels[1] == 0).all() and (out.deltas[1] == 0).all()  # the image without boxes


def test_iou_fast_path_gives_identical_targets():
    anchor_gen = AnchorGenerator(sizes=(32, 64, 128), stride=16)
    anchors = anchor_gen.grid_anchors(FEATURE)
    boxes, labels, valid = make_batch(1, [3, 5])
    kwargs = dict(matcher=rpn_matcher(), box_coder=BoxCoder(), gt_labels=labels, num_samples=64)
    slow = assign_targets(anchors, boxes, valid, generator=torch.Generator().manual_seed(0),
                          **kwargs)
    fast = assign_targets(anchors, boxes, valid, generator=torch.Generator().manual_seed(0),
                          iou=anchor_gen.iou(FEATURE, boxes, valid), **kwargs)
    for name in ("labels", "deltas", "matched_idx"):
        assert torch.equal(getattr(slow, name), getattr(fast, name))


def test_sampled_assignment_counts_and_deltas():
    anchors = AnchorGenerator(sizes=(32, 64, 128), stride=16).grid_anchors(FEATURE)
    boxes, labels, valid = make_batch(2, [6, 2, 0])
    common = dict(matcher=rpn_matcher(), box_coder=BoxCoder(), gt_labels=labels)
    dense = assign_targets(anchors, boxes, valid, **common)
    sampled = assign_targets(anchors, boxes, valid, num_samples=256, positive_fraction=0.5,
                             generator=torch.Generator().manual_seed(0), **common)
    fg, bg = sampled.labels > 0, sampled.labels == 0
    dense_fg, dense_bg = dense.labels > 0, dense.labels == 0
    assert not (fg & ~dense_fg).any() and not (bg & ~dense_bg).any()  # drawn from candidates
    expected_fg = dense_fg.sum(1).clamp(max=128)
    assert torch.equal(fg.sum(1), expected_fg)
    assert torch.equal(bg.sum(1), torch.minimum(dense_bg.sum(1), 256 - expected_fg))
    assert torch.equal(sampled.labels[fg], dense.labels[fg])  # classes of the drawn foreground
    assert torch.equal(sampled.matched_idx[fg], dense.matched_idx[fg])
    assert torch.equal(sampled.deltas[fg], dense.deltas[fg])
    assert (sampled.deltas[~fg] == 0).all()


def test_class_agnostic_labels_and_ignored_references():
    anchors = AnchorGenerator(sizes=(32, 64, 128), stride=16).grid_anchors(FEATURE)
    boxes, _, valid = make_batch(3, [5, 5])
    gen = torch.Generator().manual_seed(1)
    reference_valid = torch.rand(2, anchors.shape[0], generator=gen) > 0.3
    out = assign_targets(anchors, boxes, valid, matcher=rpn_matcher(), box_coder=BoxCoder(),
                         reference_valid=reference_valid)
    full = assign_targets(anchors, boxes, valid, matcher=rpn_matcher(), box_coder=BoxCoder())
    assert set(out.labels.unique().tolist()) <= {-1, 0, 1}
    assert (out.labels[~reference_valid] == -1).all()
    assert torch.equal(out.labels[reference_valid], full.labels[reference_valid])
    assert (out.deltas[~reference_valid] == 0).all()


def test_per_image_proposals_match_shared_reference():
    """A 3-D reference (proposals) gives what the same boxes give as a shared 2-D reference."""
    anchors = AnchorGenerator(sizes=(32, 64, 128), stride=16).grid_anchors(FEATURE)
    boxes, labels, valid = make_batch(4, [2, 6])
    roi = Matcher(thresholds=(0.5,), labels=(0, 1))
    common = dict(matcher=roi, box_coder=BoxCoder(weights=(10, 10, 5, 5)), gt_labels=labels)
    shared = assign_targets(anchors, boxes, valid, **common)
    per_image = assign_targets(anchors.expand(2, -1, -1), boxes, valid, **common)
    assert torch.equal(shared.labels, per_image.labels)
    assert torch.equal(shared.deltas, per_image.deltas)
    sampled = assign_targets(anchors.expand(2, -1, -1), boxes, valid, num_samples=512,
                             positive_fraction=0.25, generator=torch.Generator().manual_seed(0),
                             **common)
    fg = sampled.labels > 0
    assert torch.equal(sampled.deltas[fg], shared.deltas[fg])


@pytest.mark.gpu
def test_whole_batch_without_host_sync_on_cuda(cuda_device):
    """The full path runs under sync debug mode "error": any host-device sync raises."""
    anchor_gen = AnchorGenerator(stride=16)
    feature = (40, 60)
    anchors = anchor_gen.grid_anchors(feature, device=cuda_device)  # built (and cached) up front
    anchor_gen.grid_intervals(feature, device=cuda_device)
    boxes, labels, valid = (t.to(cuda_device) for t in make_batch(5, [6, 0, 3]))
    boxes = boxes * 3
    reference_valid = torch.ones(3, anchors.shape[0], dtype=torch.bool, device=cuda_device)
    generator = torch.Generator(device=cuda_device).manual_seed(0)
    torch.cuda.synchronize(cuda_device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        rpn = assign_targets(
            anchors, boxes, valid, matcher=rpn_matcher(), box_coder=BoxCoder(), num_samples=256,
            positive_fraction=0.5, generator=generator, reference_valid=reference_valid,
            iou=anchor_gen.iou(feature, boxes, valid),
        )
        roi = assign_targets(
            anchors.expand(3, -1, -1)[:, :2000], boxes, valid, gt_labels=labels,
            matcher=Matcher(thresholds=(0.5,), labels=(0, 1)),
            box_coder=BoxCoder(weights=(10, 10, 5, 5)), num_samples=512, positive_fraction=0.25,
            generator=generator,
        )
        dense = assign_targets(anchors, boxes, valid, matcher=rpn_matcher(), box_coder=BoxCoder())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    cpu = assign_targets(anchors.cpu(), boxes.cpu(), valid.cpu(), matcher=rpn_matcher(),
                         box_coder=BoxCoder())
    assert torch.equal(dense.labels.cpu(), cpu.labels)
    torch.testing.assert_close(dense.deltas.cpu(), cpu.deltas, rtol=1e-5, atol=1e-5)
    assert torch.equal((rpn.labels > 0).sum(1).cpu(), (cpu.labels > 0).sum(1).clamp(max=128))
    assert (roi.labels >= 0).sum(1).le(512).all()
