"""Tests for detector/ops/packing.py: hand cases of pack_rows and gather_rows."""

from __future__ import annotations

import torch

from detector.ops.packing import gather_rows, pack_rows, use_compaction


def _mask(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


def test_pack_rows_keeps_row_order_and_pads():
    mask = _mask([[0, 1, 0, 1, 1], [1, 0, 0, 0, 0]])
    index, valid = pack_rows(mask, 4)
    assert index.dtype == torch.long and valid.dtype == torch.bool
    assert valid.tolist() == [[True, True, True, False], [True, False, False, False]]
    assert index[valid].tolist() == [1, 3, 4, 0]
    assert (index[~valid] == 0).all()  # padding slots point at column 0


def test_pack_rows_capacity_overflow_keeps_the_first_selected():
    mask = _mask([[1, 1, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1]])
    index, valid = pack_rows(mask, 2)
    assert index.tolist() == [[0, 1], [4, 5]]
    assert valid.all()


def test_pack_rows_empty_rows_and_empty_inputs():
    index, valid = pack_rows(_mask([[0, 0, 0], [0, 1, 0]]), 2)
    assert index.tolist() == [[0, 0], [1, 0]]
    assert valid.tolist() == [[False, False], [True, False]]

    index, valid = pack_rows(torch.zeros(3, 0, dtype=torch.bool), 0)
    assert index.shape == (3, 0) and valid.shape == (3, 0)

    index, valid = pack_rows(torch.zeros(0, 5, dtype=torch.bool), 3)
    assert index.shape == (0, 3) and valid.shape == (0, 3)


def test_pack_rows_capacity_larger_than_rows():
    index, valid = pack_rows(_mask([[1, 0, 1]]), 5)
    assert index.tolist() == [[0, 2, 0, 0, 0]]
    assert valid.tolist() == [[True, True, False, False, False]]


def test_pack_rows_matches_a_python_reference_on_random_masks():
    generator = torch.Generator().manual_seed(0)
    for capacity in (0, 1, 7, 40):
        mask = torch.rand(5, 30, generator=generator) < 0.3
        index, valid = pack_rows(mask, capacity)
        for row in range(5):
            expected = mask[row].nonzero().squeeze(1).tolist()[:capacity]
            assert index[row, : len(expected)].tolist() == expected
            assert valid[row].tolist() == [k < len(expected) for k in range(capacity)]


def test_gather_rows_takes_rows_per_image():
    values = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    index = torch.tensor([[3, 0], [1, 1]])
    out = gather_rows(values, index)
    assert out.shape == (2, 2, 3)
    assert torch.equal(out[0], values[0, [3, 0]])
    assert torch.equal(out[1], values[1, [1, 1]])
    # 2-D values (one scalar per row) work as well
    assert gather_rows(values[..., 0], index).tolist() == [[9.0, 0.0], [15.0, 15.0]]


# ----------------------------------------------------------------------------- use_compaction


def test_compaction_is_automatic_on_the_cpu_only_and_explicit_otherwise():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_compaction(None, cpu) and not use_compaction(None, cuda)
    assert use_compaction(True, cuda) and not use_compaction(False, cpu)


def test_compaction_is_never_used_while_exporting(monkeypatch):
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    assert not use_compaction(None, torch.device("cpu"))
    assert not use_compaction(True, torch.device("cpu"))


def test_compaction_is_never_used_under_compile_or_torch_export(monkeypatch):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # also true in torch.export
    assert not use_compaction(True, torch.device("cpu"))
