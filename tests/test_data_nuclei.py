"""The shipped-nuclei importer (pairforge.data.nuclei) on files laid out as in the stardist wheel,
made here (the real loading code, run on generated data)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from pairforge.data.dataset import load_dataset
from pairforge.data.nuclei import IMAGE_FILE, MASK_FILE, write_nuclei_dataset
from pairforge.errors import PairforgeError


def _fake_package(root, size=512):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 236, (size, size)).astype(np.uint16)
    instances = np.zeros((size, size), np.uint16)
    instances[10:30, 10:30] = 1
    instances[300:320, 400:430] = 7
    (root / IMAGE_FILE).parent.mkdir(parents=True)
    tifffile.imwrite(root / IMAGE_FILE, image)
    tifffile.imwrite(root / MASK_FILE, instances)
    return image, instances


def test_quadrants_become_three_train_and_one_test_measurement(tmp_path):
    image, instances = _fake_package(tmp_path / "stardist")
    ds = load_dataset(write_nuclei_dataset(tmp_path / "out", tmp_path / "stardist"))
    assert ds.ids("train") == ["q00", "q01", "q10"] and ds.ids("test") == ["q11"]
    assert ds.num_channels == 1 and [c.name for c in ds.spec.classes] == ["background", "nucleus"]
    np.testing.assert_array_equal(ds.read_image("q01")[0], image[:256, 256:].astype(np.float32))
    mask = ds.read_mask("q11")
    assert mask.shape == (256, 256) and mask.max() == 1
    assert int(mask.sum()) == 20 * 30  # instance 7 at rows 300-320, cols 400-430
    np.testing.assert_array_equal(ds.read_mask("q00"), (instances[:256, :256] > 0).astype(np.int64))


def test_missing_package_files_name_the_install_command(tmp_path):
    with pytest.raises(PairforgeError, match="pip install --no-deps stardist==0.9.2"):
        write_nuclei_dataset(tmp_path / "out", tmp_path / "nowhere")
    _fake_package(tmp_path / "small", size=256)
    with pytest.raises(
        PairforgeError, match=r"img2d.tif: expected a 512 x 512 array, got shape \(256, 256\)"
    ):
        write_nuclei_dataset(tmp_path / "out", tmp_path / "small")
    _fake_package(tmp_path / "corrupt")
    (tmp_path / "corrupt" / MASK_FILE).write_bytes(b"II*\x00 truncated")
    with pytest.raises(PairforgeError, match="mask2d.tif: holds no pixels"):
        write_nuclei_dataset(tmp_path / "out", tmp_path / "corrupt")
