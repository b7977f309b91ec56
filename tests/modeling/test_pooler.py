"""The sparse-product RoIAlign: hand-computed cells, torchvision's kernel as the reference for
values and gradients, and when the module takes which path."""

import pytest
import torch
from torchvision.ops import roi_align

from detector.modeling.pooler import RoIAlign, roi_align_matrix, sparse_roi_align


def _ramp(height=4, width=4):
    """features[0, 0, y, x] = 10 y + x: bilinear interpolation of a linear map is exact."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return (10.0 * ys + xs).float()[None, None]


def test_hand_computed_cells_of_a_linear_map():
    # aligned, scale 1: the RoI (0, 0, 4, 4) starts at -0.5; 2 x 2 cells of 2 x 2 samples sit at
    # -0.5 + 0.5, 1.5, 2.5, 3.5 = 0, 1, 2, 3 on each axis; cell means: 0.5 and 2.5.
    rois = torch.tensor([[0.0, 0.0, 0.0, 4.0, 4.0]])
    out = sparse_roi_align(_ramp(), rois, output_size=(2, 2), spatial_scale=1.0,
                           sampling_ratio=2, aligned=True)
    assert torch.allclose(out[0, 0], torch.tensor([[5.5, 7.5], [25.5, 27.5]]))


def test_samples_beyond_one_cell_outside_read_zero_and_nearer_ones_the_border():
    features = _ramp()
    # not aligned: the 0.5-wide RoI grows to 1 cell; its one sample sits at x = -1 + 0.5 = -0.5
    # (clamped to column 0) and y = 1 + 0.5 = 1.5 -> 10 * 1.5 + 0 = 15
    near = torch.tensor([[0.0, -1.0, 1.0, -0.5, 1.5]])
    out = sparse_roi_align(features, near, output_size=(1, 1), spatial_scale=1.0,
                           sampling_ratio=1, aligned=False)
    assert out.item() == pytest.approx(15.0)
    assert out.item() == pytest.approx(roi_align(features, near, (1, 1), 1.0, 1, False).item())
    far = torch.tensor([[0.0, -9.0, -9.0, -5.0, -5.0]])  # every sample below -1
    out = sparse_roi_align(features, far, output_size=(2, 2), spatial_scale=1.0,
                           sampling_ratio=2, aligned=True)
    assert torch.equal(out, torch.zeros_like(out))


def test_samples_exactly_on_the_last_row_and_column_and_on_the_far_border():
    """Random RoIs never hit a sample exactly on a feature cell; these do. Not aligned, scale 1,
    2 x 2 cells of 1 sample, on a 4 x 5 map: the sample of cell (p, q) sits at
    ``(y1 + (p + 0.5) h / 2, x1 + (q + 0.5) w / 2)``."""
    features = torch.cat((_ramp(4, 5), _ramp(4, 5) + 100.0))  # image 1 tells a read past image 0
    rois = torch.tensor([
        # ends at the border: samples at y = 1, 3 (the last row), x = 2, 4 (the last column)
        [0.0, 1.0, 0.0, 5.0, 4.0],
        # samples at y = 2, 4 (= Hf) and x = 3, 5 (= Wf): on the far border, clamped to 3 and 4
        [0.0, 2.0, 1.0, 6.0, 5.0],
    ])
    out = sparse_roi_align(features, rois, output_size=(2, 2), spatial_scale=1.0,
                           sampling_ratio=1, aligned=False)
    assert torch.equal(out[0, 0], torch.tensor([[12.0, 14.0], [32.0, 34.0]]))
    assert torch.equal(out[1, 0], torch.tensor([[23.0, 24.0], [33.0, 34.0]]))
    ref = roi_align(features, rois, (2, 2), 1.0, 1, False)
    assert torch.equal(ref, out)
    # and with random values and gradients, both images, against torchvision's kernel
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, 4, 5, generator=gen)
    rois = torch.cat((rois, rois + torch.tensor([1.0, 0, 0, 0, 0])))
    upstream = torch.randn(4, 3, 2, 2, generator=gen)
    grads = []
    for fn in (lambda f: roi_align(f, rois, (2, 2), 1.0, 1, False),
               lambda f: sparse_roi_align(f, rois, output_size=(2, 2), spatial_scale=1.0,
                                          sampling_ratio=1, aligned=False)):
        leaf = features.clone().requires_grad_()
        out = fn(leaf)
        (out * upstream).sum().backward()
        grads.append((out.detach(), leaf.grad))
    torch.testing.assert_close(grads[1], grads[0])


def _random_rois(num, batch, height, width, stride, generator):
    image = torch.randint(0, batch, (num, 1), generator=generator).float()
    size = torch.tensor([width * stride, height * stride], dtype=torch.float32)
    xy = torch.rand(num, 2, generator=generator) * size * 1.2 - 0.1 * size  # some cross the edge
    wh = torch.rand(num, 2, generator=generator) ** 2 * size * 0.8  # many tiny ones
    return torch.cat((image, xy, xy + wh), dim=1)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize(("output_size", "sampling_ratio"), [((7, 7), 2), ((3, 5), 1), ((4, 4), 3)])
def test_matches_torchvision_values_and_gradients(aligned, output_size, sampling_ratio):
    gen = torch.Generator().manual_seed(3)
    batch, channels, height, width, stride = 3, 8, 9, 13, 16
    features = torch.randn(batch, channels, height, width, generator=gen)
    rois = _random_rois(60, batch, height, width, stride, gen)
    upstream = torch.randn(60, channels, *output_size, generator=gen)
    results = []
    for fn in (
        lambda f: roi_align(f, rois, output_size, 1 / stride, sampling_ratio, aligned),
        lambda f: sparse_roi_align(f, rois, output_size=output_size, spatial_scale=1 / stride,
                                   sampling_ratio=sampling_ratio, aligned=aligned),
    ):
        leaf = features.clone().requires_grad_()
        out = fn(leaf)
        (out * upstream).sum().backward()
        results.append((out.detach(), leaf.grad))
    (ref, ref_grad), (got, got_grad) = results
    assert got.shape == ref.shape == (60, channels, *output_size)
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-5)
    assert torch.allclose(got_grad, ref_grad, atol=1e-5, rtol=1e-5)
    assert ref.abs().sum() > 0  # the case is not all-outside


def test_non_finite_and_huge_rois_give_nan_or_zero_cells_never_a_bad_read():
    """A diverging model's proposals: NaN or infinite RoIs yield NaN cells (the loss guard sees
    them), astronomically large finite ones lie outside (zeros); the other RoIs are untouched."""
    features = torch.randn(2, 3, 5, 6, generator=torch.Generator().manual_seed(0))
    good = torch.tensor([[1.0, 8.0, 4.0, 60.0, 50.0]])
    bad = torch.tensor([[0.0, float("nan"), 0.0, 30.0, 30.0],
                        [1.0, 0.0, 0.0, float("inf"), 30.0],
                        [0.0, 1e30, 1e30, 3e30, 3e30]])
    out = sparse_roi_align(features, torch.cat((good, bad)), output_size=(2, 2),
                           spatial_scale=1 / 16, sampling_ratio=2)
    assert torch.isnan(out[1]).all() and torch.isnan(out[2]).any()
    assert torch.equal(out[3], torch.zeros_like(out[3]))
    ref = roi_align(features, good, (2, 2), 1 / 16, 2, False)
    assert torch.allclose(out[:1], ref, atol=1e-6)


def test_every_row_holds_four_taps_per_sample_and_rows_sum_to_at_most_one():
    rois = torch.tensor([[0.0, 8.0, 8.0, 40.0, 56.0], [1.0, -100.0, -100.0, -60.0, -60.0]])
    matrix = roi_align_matrix(rois, feature_shape=(2, 5, 6), output_size=(2, 3),
                              spatial_scale=1 / 16, sampling_ratio=2, aligned=False)
    assert matrix.shape == (2 * 2 * 3, 2 * 5 * 6)
    assert matrix.values().numel() == 2 * 2 * 3 * 4 * 2**2
    dense = matrix.to_dense()
    assert torch.allclose(dense[:6].sum(dim=1), torch.ones(6))  # inside: weights sum to 1
    assert torch.equal(dense[6:], torch.zeros(6, 60))  # far outside: nothing
    assert torch.equal(dense[:6, 30:], torch.zeros(6, 30))  # image 0 never reads image 1


def test_no_rois_gives_an_empty_batch_and_a_zero_gradient():
    features = torch.randn(2, 4, 5, 5, requires_grad=True)
    out = sparse_roi_align(features, torch.zeros(0, 5), output_size=(7, 7), spatial_scale=0.25,
                           sampling_ratio=2)
    assert out.shape == (0, 4, 7, 7)
    out.sum().backward()
    assert torch.equal(features.grad, torch.zeros_like(features))


def test_bf16_autocast_computes_in_float32():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(1, 4, 6, 6, generator=gen)
    rois = torch.tensor([[0.0, 3.0, 5.0, 70.0, 60.0]])
    kwargs = dict(output_size=(2, 2), spatial_scale=1 / 16, sampling_ratio=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = sparse_roi_align(features, rois, **kwargs)
    assert got.dtype == torch.float32
    assert torch.allclose(got, sparse_roi_align(features, rois, **kwargs))


def test_adaptive_sampling_is_refused_by_the_function():
    with pytest.raises(ValueError, match="sampling_ratio > 0"):
        sparse_roi_align(torch.zeros(1, 1, 2, 2), torch.zeros(1, 5), output_size=(1, 1),
                         spatial_scale=1.0, sampling_ratio=0)


def test_module_paths(monkeypatch):
    cpu = torch.device("cpu")
    auto = RoIAlign(output_size=7, spatial_scale=1 / 16)
    assert auto.output_size == (7, 7) and auto.sampling_ratio == 2
    assert auto.uses_sparse(cpu)
    assert not auto.uses_sparse(torch.device("cuda"))  # torchvision's kernel off the CPU
    assert RoIAlign(output_size=7, spatial_scale=1, backend="sparse").uses_sparse(
        torch.device("cuda"))
    assert not RoIAlign(output_size=7, spatial_scale=1, backend="torchvision").uses_sparse(cpu)
    assert not RoIAlign(output_size=7, spatial_scale=1, sampling_ratio=-1).uses_sparse(cpu)
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    assert not RoIAlign(output_size=7, spatial_scale=1, backend="sparse").uses_sparse(cpu)
    with pytest.raises(ValueError, match="backend must be one of"):
        RoIAlign(output_size=7, spatial_scale=1, backend="cuda")


@pytest.mark.parametrize("backend", ["sparse", "torchvision"])
def test_module_equals_torchvision_module(backend):
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(2, 3, 7, 9, generator=gen)
    rois = _random_rois(20, 2, 7, 9, 8, gen)
    ours = RoIAlign(output_size=(2, 3), spatial_scale=1 / 8, sampling_ratio=2, aligned=True,
                    backend=backend)
    from torchvision.ops import RoIAlign as TorchvisionRoIAlign

    ref = TorchvisionRoIAlign((2, 3), 1 / 8, 2, True)(features, rois)
    assert torch.allclose(ours(features, rois), ref, atol=1e-5, rtol=1e-5)
    assert "backend=" in repr(ours)


def test_repeated_runs_are_bitwise_equal():
    """Exact resume relies on it: the same values and gradients, bit for bit, every time."""
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(2, 64, 12, 15, generator=gen)
    rois = _random_rois(200, 2, 12, 15, 16, gen)
    upstream = torch.randn(200, 64, 7, 7, generator=gen)
    runs = []
    for _ in range(3):
        leaf = features.clone().requires_grad_()
        out = sparse_roi_align(leaf, rois, output_size=(7, 7), spatial_scale=1 / 16,
                               sampling_ratio=2)
        (out * upstream).sum().backward()
        runs.append((out.detach(), leaf.grad))
    for out, grad in runs[1:]:
        assert torch.equal(out, runs[0][0]) and torch.equal(grad, runs[0][1])
