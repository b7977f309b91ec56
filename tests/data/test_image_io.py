"""read_image_rgb: channel fixing, BGR -> RGB, and errors that name the file."""

import numpy as np
import pytest

from detector.data.image_io import read_image_rgb, to_rgb_uint8
from detector.data.report import DatasetError


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_reads_any_channel_count_as_rgb(tmp_path, helpers, channels):
    path = helpers.write_image(tmp_path / "a.png", 5, 7, color=(200, 100, 50), channels=channels)
    image = read_image_rgb(path)
    assert image.shape == (5, 7, 3) and image.dtype == np.uint8
    if channels == 1:
        assert (image == image[:, :, :1]).all()  # grey replicated to 3 equal channels
    else:
        assert image[0, 0].tolist() == [200, 100, 50]  # RGB order, not OpenCV's BGR


def test_sixteen_bit_is_scaled_to_uint8():
    raw = np.full((2, 3, 3), 0xFF00, dtype=np.uint16)
    raw[..., 0] = 0x1000  # blue in BGR order
    image = to_rgb_uint8(raw)
    assert image.dtype == np.uint8 and image[0, 0].tolist() == [0xFF, 0xFF, 0x10]


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(DatasetError, match="nope.jpg does not exist") as info:
        read_image_rgb(tmp_path / "nope.jpg")
    assert info.value.kind == "missing_image"


@pytest.mark.parametrize("content", [b"", b"this is not a jpeg at all" * 10])
def test_corrupt_file_names_the_file(tmp_path, content):
    path = tmp_path / "broken.jpg"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match="broken.jpg is corrupt") as info:
        read_image_rgb(path)
    assert info.value.kind == "unreadable_image"


def test_unicode_path(tmp_path, helpers):
    path = helpers.write_image(tmp_path / "b.png", 4, 4)
    target = tmp_path / "ünïcødé.png"
    path.rename(target)
    assert read_image_rgb(target).shape == (4, 4, 3)
