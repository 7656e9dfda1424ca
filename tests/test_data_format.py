"""The standard dataset format: write -> read round trips, normalization, views and bad input."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pairforge.data.dataset import DatasetWriter, load_dataset
from pairforge.data.normalize import ChannelNormalizer
from pairforge.data.spec import ChannelSpec, ClassSpec, DatasetSpec
from pairforge.data.views import (
    RandomCropDataset,
    downsample_image,
    downsample_mask,
    load_tiles,
    stitch,
    tile_coords,
    tile_image,
)
from pairforge.errors import PairforgeError


def make_spec(**kw) -> DatasetSpec:
    return DatasetSpec(
        name="t",
        channels=[ChannelSpec(name="intensity", unit="a.u."), ChannelSpec(name="depth", unit="um")],
        classes=[
            ClassSpec(id=0, name="binder", color=(10, 10, 10)),
            ClassSpec(id=1, name="grain", color=(200, 150, 0)),
            ClassSpec(id=7, name="pore", color=(0, 0, 250)),
        ],
        **kw,
    )


def write_small(root: Path, n=3, size=(40, 48), seed=0):
    rng = np.random.default_rng(seed)
    items = []
    with DatasetWriter(root, make_spec()) as w:
        for i in range(n):
            image = rng.normal(size=(2, *size)).astype(np.float32) * [[[1.0]], [[50.0]]]
            mask = rng.integers(0, 3, size=size)
            split = "test" if i == n - 1 else "train"
            w.add(f"s{i}", image.astype(np.float32), mask, split=split)
            items.append((image.astype(np.float32), mask))
    return items


def test_write_read_round_trip(tmp_path):
    items = write_small(tmp_path)
    ds = load_dataset(tmp_path)
    assert ds.ids() == ["s0", "s1", "s2"]
    assert ds.ids("test") == ["s2"]
    for i, (image, mask) in enumerate(items):
        got_image, got_mask = ds.read_pair(f"s{i}")
        np.testing.assert_array_equal(got_image, image)
        np.testing.assert_array_equal(got_mask, mask)
    # Class index 2 is stored as its id 7 on disk.
    raw = np.asarray(Image.open(tmp_path / "masks" / "s0.png"))
    assert set(np.unique(raw)) <= {0, 1, 7}
    assert 7 in raw


def test_writer_resumes(tmp_path):
    write_small(tmp_path, n=2)
    w = DatasetWriter(tmp_path, make_spec())
    assert w.has("s0") and w.has("s1") and not w.has("s2")
    w.add("s2", np.zeros((2, 40, 48), np.float32), None, split="train")
    w.close()
    ds = load_dataset(tmp_path)
    assert sorted(ds.ids()) == ["s0", "s1", "s2"]
    assert ds.read_mask("s2") is None


def test_normalizer_round_trip_and_range():
    rng = np.random.default_rng(1)
    arrays = [rng.normal(3.0, 2.0, size=(2, 64, 64)).astype(np.float32) for _ in range(3)]
    n = ChannelNormalizer.fit(arrays)
    enc = n.encode(arrays[0])
    assert enc.dtype == np.float32
    assert np.quantile(enc, 0.995) <= 1.05 and np.quantile(enc, 0.005) >= -1.05
    np.testing.assert_allclose(n.decode(enc), arrays[0], rtol=1e-5, atol=1e-5)
    t = torch.from_numpy(arrays[1])[None]
    np.testing.assert_allclose(n.decode(n.encode(t)).numpy(), t.numpy(), atol=1e-5)
    assert ChannelNormalizer.from_dict(n.to_dict()).to_dict() == n.to_dict()
    with pytest.raises(PairforgeError, match="high"):
        ChannelNormalizer([1.0], [1.0])


def test_tiling_and_stitching_gives_back_the_measurement():
    image = np.random.default_rng(2).normal(size=(2, 70, 130)).astype(np.float32)
    for overlap, blend in [(0, "mean"), (8, "mean"), (12, "hann")]:
        tiles, coords = tile_image(image, 32, overlap)
        assert tiles.shape[1:] == (2, 32, 32)
        back = stitch(tiles, coords, image.shape[1:], blend=blend)
        np.testing.assert_allclose(back, image, atol=1e-5)
    ys = {y for y, _ in tile_coords(70, 130, 32, 0)}
    assert max(ys) == 70 - 32


def test_mask_downsampling_keeps_class_fractions():
    rng = np.random.default_rng(3)
    # Blobby masks: smooth noise thresholded into three classes.
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.normal(size=(256, 256)), 6)
    mask = np.digitize(field, np.quantile(field, [0.6, 0.9]))
    small = downsample_mask(mask, 4, 3)
    assert small.shape == (64, 64)
    for k in range(3):
        assert abs((small == k).mean() - (mask == k).mean()) < 0.02
    # A thin class that dominates its blocks survives; ignore never wins.
    m = np.zeros((8, 8), np.int64)
    m[:, :3] = 1
    m[:4, 5:] = 255  # top-right block: 4 of 16 pixels labeled (class 0) -> not a majority
    out = downsample_mask(m, 4, 2)
    assert out.tolist() == [[1, 255], [1, 0]]
    # min_labeled_fraction 0: any labeled pixel labels its block (the old behaviour, stated).
    assert downsample_mask(m, 4, 2, min_labeled_fraction=0.0).tolist() == [[1, 0], [1, 0]]
    all_ignore = np.full((4, 4), 255)
    assert downsample_mask(all_ignore, 4, 2).tolist() == [[255]]


def test_mask_downsampling_needs_a_labeled_majority_of_the_block():
    # One labeled pixel out of 16 used to label the whole 4 x 4 block.
    block = np.full((4, 4), 255, np.int64)
    block[0, 0] = 1
    assert downsample_mask(block, 4, 2).tolist() == [[255]]
    # Exactly half labeled is not more than half; 9 of 16 is, and the labeled majority class wins.
    half = np.full((4, 4), 255, np.int64)
    half[:2] = 1
    assert downsample_mask(half, 4, 2).tolist() == [[255]]
    half.flat[8] = 0
    assert downsample_mask(half, 4, 2).tolist() == [[1]]
    # A stated fraction: 4 of 16 labeled passes 0.2, fails 0.25 ("more than").
    quarter = np.full((4, 4), 255, np.int64)
    quarter[0] = 0
    assert downsample_mask(quarter, 4, 2, min_labeled_fraction=0.2).tolist() == [[0]]
    assert downsample_mask(quarter, 4, 2, min_labeled_fraction=0.25).tolist() == [[255]]
    with pytest.raises(PairforgeError, match="min_labeled_fraction=1.0"):
        downsample_mask(quarter, 4, 2, min_labeled_fraction=1.0)


def test_area_downsampling_is_block_mean():
    x = torch.arange(16.0).reshape(1, 4, 4)
    assert downsample_image(x, 2)[0].tolist() == [[2.5, 4.5], [10.5, 12.5]]


def test_random_crops_are_deterministic_and_paired(tmp_path):
    write_small(tmp_path, size=(64, 96))
    ds = load_dataset(tmp_path)
    view = RandomCropDataset(ds, ds.ids("train"), crop_size=32, resolution=16, seed=5)
    a, b = view[3], view[3]
    assert a["image"].shape == (2, 16, 16) and a["mask"].shape == (16, 16)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    view.set_epoch(1)
    assert not torch.equal(view[3]["image"], a["image"])
    # Paired geometry: with resolution == crop size the mask follows the same flips/rotations.
    ident = RandomCropDataset(ds, ["s0"], crop_size=32, resolution=32, seed=0)
    image, mask = ds.read_pair("s0")
    enc = ds.normalizer.encode(image)
    for i in range(6):
        item = ident[i]
        found = False
        for y in range(64 - 31):
            for x in range(96 - 31):
                crop = torch.from_numpy(enc[0, y : y + 32, x : x + 32])
                mcrop = torch.from_numpy(mask[y : y + 32, x : x + 32])
                for rot in range(4):
                    for fl in (False, True):
                        c = crop.flip(-1) if fl else crop
                        mc = mcrop.flip(-1) if fl else mcrop
                        c, mc = torch.rot90(c, rot), torch.rot90(mc, rot)
                        if torch.allclose(c, item["image"][0]):
                            assert torch.equal(mc, item["mask"])
                            found = True
        assert found


def test_load_tiles(tmp_path):
    write_small(tmp_path, size=(64, 96))
    ds = load_dataset(tmp_path)
    tiles = load_tiles(ds, ["s2"], crop_size=32, resolution=16)
    assert tiles["image"].shape == (6, 2, 16, 16) and tiles["mask"].shape == (6, 16, 16)
    assert tiles["source"][0] == ("s2", 0, 0)
    assert tiles["sizes"] == {"s2": (64, 96)}


# -- bad input -------------------------------------------------------------------------------
def test_unknown_key_in_dataset_yaml(tmp_path):
    write_small(tmp_path)
    spec = yaml.safe_load((tmp_path / "dataset.yaml").read_text())
    spec["chanels"] = []
    (tmp_path / "dataset.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(PairforgeError, match=r"dataset.yaml: chanels: unknown key"):
        load_dataset(tmp_path)


def test_missing_folder_and_empty_folder(tmp_path):
    with pytest.raises(PairforgeError, match="not found"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "dataset.yaml").write_text(yaml.safe_dump({"channels": [{"name": "a"}]}))
    with pytest.raises(PairforgeError, match="folder not found"):
        load_dataset(tmp_path)
    (tmp_path / "images").mkdir()
    with pytest.raises(PairforgeError, match="no images found"):
        load_dataset(tmp_path)


def test_unknown_class_ids_are_reported(tmp_path):
    write_small(tmp_path)
    Image.fromarray(np.full((40, 48), 5, np.uint8)).save(tmp_path / "masks" / "s1.png")
    ds = load_dataset(tmp_path)
    with pytest.raises(PairforgeError, match=r"s1.png: unknown class ids 5 \(1920 px\)"):
        ds.read_mask("s1")


def test_size_mismatch_and_channel_count(tmp_path):
    write_small(tmp_path)
    Image.fromarray(np.zeros((20, 48), np.uint8)).save(tmp_path / "masks" / "s1.png")
    np.save(tmp_path / "images" / "s0.npy", np.zeros((3, 40, 48), np.float32))
    (tmp_path / "images" / "s0.tif").unlink()
    ds = load_dataset(tmp_path)
    with pytest.raises(PairforgeError, match="mask size 48x20 .* differs from its image 48x40"):
        ds.read_pair("s1")
    with pytest.raises(
        PairforgeError, match=r"s0.npy: has shape \(3, 40, 48\), expected 2 channel"
    ):
        ds.read_image("s0")


def test_corrupt_image(tmp_path):
    write_small(tmp_path)
    (tmp_path / "images" / "s1.tif").write_bytes(b"not a tiff at all")
    ds = load_dataset(tmp_path)
    with pytest.raises(PairforgeError, match="s1.tif: cannot be read"):
        ds.read_image("s1")


def test_missing_image_for_listed_sample(tmp_path):
    write_small(tmp_path)
    (tmp_path / "images" / "s1.tif").unlink()
    with pytest.raises(PairforgeError, match="no image for sample 's1'"):
        load_dataset(tmp_path)


def test_color_masks_and_unknown_colors(tmp_path):
    spec = make_spec(mask_encoding="color", splits={"train": ["a"]})
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "dataset.yaml").write_text(spec.to_yaml())
    np.save(tmp_path / "images" / "a.npy", np.zeros((2, 4, 4), np.float32))
    rgb = np.full((4, 4, 3), 10, np.uint8)
    rgb[:2] = (200, 150, 0)
    rgb[3, 3] = (0, 0, 250)
    Image.fromarray(rgb).save(tmp_path / "masks" / "a.png")
    mask = load_dataset(tmp_path).read_mask("a")
    assert mask[:2].tolist() == [[1] * 4] * 2 and mask[3, 3] == 2 and mask[2, 0] == 0
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "masks" / "a.png")
    with pytest.raises(PairforgeError, match=r"unknown mask colors \(1, 2, 3\) \(1 px\)"):
        load_dataset(tmp_path).read_mask("a")


def test_per_channel_png_files(tmp_path):
    spec = make_spec(splits={"train": ["a"]})
    (tmp_path / "images").mkdir()
    (tmp_path / "dataset.yaml").write_text(spec.to_yaml())
    i16 = (np.arange(20, dtype=np.uint16).reshape(4, 5) * 1000).astype(np.uint16)
    Image.fromarray(i16).save(tmp_path / "images" / "a_intensity.png")
    Image.fromarray(np.full((4, 5), 9, np.uint8)).save(tmp_path / "images" / "a_depth.png")
    image = load_dataset(tmp_path).read_image("a")
    assert image.shape == (2, 4, 5) and image.dtype == np.float32
    assert image[0, 3, 4] == 19000 and image[1].max() == 9
