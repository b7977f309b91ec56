"""DataReport: the error-or-skip policy and its counters."""

import pytest

from detector.data.report import DataReport, DatasetError


def test_error_policy_raises_with_kind_and_hint():
    report = DataReport(on_bad="error", name="x.json")
    with pytest.raises(DatasetError, match=r"image a\.jpg is broken.*on_bad='skip'") as info:
        report.bad("unreadable_image", "image a.jpg is broken")
    assert info.value.kind == "unreadable_image"
    assert report.as_dict() == {}


def test_skip_policy_warns_and_counts():
    report = DataReport(on_bad="skip", name="x.json")
    with pytest.warns(UserWarning, match=r"image a\.jpg is broken; skipped"):
        report.bad("unreadable_image", "image a.jpg is broken")
    with pytest.warns(UserWarning):
        report.bad("unreadable_image", "image b.jpg is broken")
    assert report["unreadable_image"] == 2
    assert report["missing_image"] == 0


def test_count_never_raises_and_summary_lists_nonzero_counters():
    report = DataReport(on_bad="error", name="set")
    report.count("clipped_box", 3)
    report.count("degenerate_box", 0)
    assert report.as_dict() == {"clipped_box": 3}
    summary = report.summary()
    assert "3" in summary and "clipped" in summary and "degenerate" not in summary
    assert "no data problems" in DataReport(name="clean").summary()


def test_rejects_unknown_policy():
    with pytest.raises(ValueError, match="on_bad"):
        DataReport(on_bad="ignore")
