"""Dataset validation: normalizer fitted on train only, NaN / truncated / linked files refused,
plain sample ids, writable outputs, and `data check` warnings for orphans, strays and unlisted files."""

from __future__ import annotations

import errno
import warnings
import zlib

import numpy as np
import pytest
import tifffile
import yaml
from PIL import Image, ImageFile
from pydantic import ValidationError
from test_bad_inputs_data import SIZE, SPEC, edit_yaml, short_png, write_good

from pairforge.data.check import check_dataset, format_report
from pairforge.data.dataset import DatasetWriter, load_dataset
from pairforge.data.files import _ADAM7, read_array
from pairforge.data.normalize import ChannelNormalizer
from pairforge.data.spec import DatasetSpec, read_spec, sample_id_problem
from pairforge.errors import PairforgeError


def set_image(root, sample_id, image):
    tifffile.imwrite(root / "images" / f"{sample_id}.tif", image, photometric="minisblack")


# -- normalizer ---------------------------------------------------------------------------
def test_normalizer_is_fitted_on_the_train_split_only(tmp_path):
    root = write_good(tmp_path / "ds")
    # A val sample far outside the train range must not move the fitted range.
    set_image(root, "m2", np.full((2, SIZE, SIZE), 1000.0, np.float32))
    fitted = load_dataset(root).normalizer
    train_only = ChannelNormalizer.fit(load_dataset(root).read_image(i) for i in ("m0", "m1"))
    np.testing.assert_allclose(fitted.high, train_only.high)
    assert fitted.high.max() < 100


def test_normalizer_without_a_train_split_raises_instead_of_fitting_on_val_and_test(tmp_path):
    root = write_good(tmp_path / "ds")
    edit_yaml(root, lambda raw: raw["splits"].update(fit=raw["splits"].pop("train")))
    with pytest.raises(PairforgeError) as err:
        _ = load_dataset(root).normalizer
    message = str(err.value)
    assert "dataset.yaml" in message and "'bad'" in message
    assert "split named 'train'" in message and "['fit', 'test', 'val']" in message
    assert "add a 'train' split" in message and "normalization:" in message
    # The fix works: a declared normalization is used as is.
    edit_yaml(root, lambda raw: raw.update(normalization={"low": [0, -1], "high": [1, 1]}))
    assert load_dataset(root).normalizer.to_dict() == {"low": [0.0, -1.0], "high": [1.0, 1.0]}


def test_normalizer_of_a_dataset_without_splits_uses_every_sample(tmp_path):
    root = write_good(tmp_path / "ds")
    edit_yaml(root, lambda raw: raw.update(splits={}))
    set_image(root, "m3", np.full((2, SIZE, SIZE), 1000.0, np.float32))
    assert load_dataset(root).normalizer.high.max() > 100


def test_fit_on_an_all_nan_channel_names_it_instead_of_index_error():
    image = np.ones((2, 4, 4), np.float32)
    image[1] = np.nan
    with pytest.raises(PairforgeError, match="channel 'depth' has no finite value"):
        ChannelNormalizer.fit([image], names=["intensity", "depth"])
    with pytest.raises(PairforgeError, match="channel 1 has no finite value"):
        ChannelNormalizer.fit([image])


# -- non-finite pixels ----------------------------------------------------------------------
def test_read_image_refuses_nan_and_inf_naming_file_channel_and_count(tmp_path):
    root = write_good(tmp_path / "ds")
    image = np.ones((2, SIZE, SIZE), np.float32)
    image[1, 0, :4] = np.nan
    image[1, 1, 0] = -np.inf
    set_image(root, "m1", image)
    ds = load_dataset(root)
    with pytest.raises(PairforgeError) as err:
        ds.read_image("m1")
    message = str(err.value)
    assert "m1.tif" in message and "5 of 1024 in channel 'depth'" in message
    assert "intensity" not in message and "fill them" in message
    report = check_dataset(root)
    assert not report["ok"] and any("5 of 1024 in channel 'depth'" in p for p in report["problems"])


def test_per_channel_files_name_the_file_with_nan(tmp_path):
    root = tmp_path / "pc"
    (root / "images").mkdir(parents=True)
    (root / "dataset.yaml").write_text(SPEC.to_yaml())
    tifffile.imwrite(root / "images" / "a_intensity.tif", np.ones((4, 4), np.float32))
    depth = np.ones((4, 4), np.float32)
    depth[0, 0] = np.nan
    tifffile.imwrite(root / "images" / "a_depth.tif", depth)
    with pytest.raises(PairforgeError, match=r"a_depth\.tif: .*1 of 16 in channel 'depth'"):
        load_dataset(root).read_image("a")


def test_writer_refuses_non_finite_images_and_writes_nothing(tmp_path):
    image = np.zeros((2, 4, 4), np.float32)
    image[0, 0, 0] = np.nan
    with DatasetWriter(tmp_path / "out", SPEC) as writer:
        with pytest.raises(PairforgeError, match="1 in channel 'intensity'"):
            writer.add("a", image)
    assert list((tmp_path / "out" / "images").iterdir()) == []


# -- truncated files ------------------------------------------------------------------------
def test_png_with_missing_rows_is_refused_though_pillow_decodes_it(tmp_path):
    mask = np.full((8, 6), 7, np.uint8)
    short_png(tmp_path / "short.png", mask[:3], height=8)
    # The premise: Pillow fills the missing rows with 0 without any error.
    with Image.open(tmp_path / "short.png") as im:
        decoded = np.asarray(im)
    assert decoded.shape == (8, 6) and (decoded[3:] == 0).all()
    with pytest.raises(PairforgeError) as err:
        read_array(tmp_path / "short.png")
    assert "short.png" in str(err.value) and "3 of 8 rows" in str(err.value)
    assert "file is truncated or corrupt; re-export it" in str(err.value)


def test_cut_png_is_refused_even_if_another_library_turned_on_lenient_loading(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 3, (32, 32), np.uint8)).save(
        tmp_path / "m.png"
    )
    data = (tmp_path / "m.png").read_bytes()
    (tmp_path / "m.png").write_bytes(data[: len(data) // 2])
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(PairforgeError, match="file is truncated or corrupt"):
            read_array(tmp_path / "m.png")
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored for that other library
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    # Only the end marker missing (all pixel data present) is still a truncated file.
    (tmp_path / "m.png").write_bytes(data[:-12])
    with pytest.raises(PairforgeError, match="end marker is missing"):
        read_array(tmp_path / "m.png")


def test_png_checksum_error_is_named(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "m.png")
    data = bytearray((tmp_path / "m.png").read_bytes())
    data[-20] ^= 0xFF  # inside the IDAT chunk
    (tmp_path / "m.png").write_bytes(bytes(data))
    with pytest.raises(PairforgeError, match=r"m\.png: .*(checksum|truncated or corrupt)"):
        read_array(tmp_path / "m.png")


@pytest.mark.parametrize("mode", ["L", "I;16", "RGB", "RGBA", "LA", "P", "1"])
def test_complete_pngs_of_every_mode_still_read(tmp_path, mode):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (13, 17, 3), np.uint8)).convert(mode)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, (13, 17), np.uint16))
    image.save(tmp_path / "x.png")
    with Image.open(tmp_path / "x.png") as im:
        expected = np.asarray(im.convert("RGB") if im.mode == "P" else im)
    np.testing.assert_array_equal(read_array(tmp_path / "x.png"), expected)


def test_interlaced_png_sizes(tmp_path):
    """Adam7 PNGs (Pillow cannot write them): complete reads, one short of a row does not."""
    h, w = 13, 17
    pixels = np.random.default_rng(0).integers(0, 256, (h, w), np.uint8)
    raw = b"".join(
        b"\x00" + row.tobytes()
        for x0, y0, dx, dy in _ADAM7
        for row in pixels[y0::dy, x0::dx]
        if pixels[y0::dy, x0::dx].size
    )

    def png(stream: bytes) -> bytes:
        def chunk(kind, body):
            crc = zlib.crc32(kind + body).to_bytes(4, "big")
            return len(body).to_bytes(4, "big") + kind + body + crc

        header = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 0, 0, 0, 1])
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(stream)) + chunk(b"IEND", b"")  # fmt: skip

    (tmp_path / "full.png").write_bytes(png(raw))
    np.testing.assert_array_equal(read_array(tmp_path / "full.png"), pixels)
    (tmp_path / "short.png").write_bytes(png(raw[:-5]))
    with pytest.raises(PairforgeError, match="truncated or corrupt"):
        read_array(tmp_path / "short.png")


# -- dataset.yaml ---------------------------------------------------------------------------
def test_dataset_yaml_folder_non_utf8_and_self_link(tmp_path):
    root = write_good(tmp_path / "ds")
    spec_file = root / "dataset.yaml"
    spec_file.write_bytes(spec_file.read_bytes().replace(b"name: bad", b"name: caf\xe9"))
    with pytest.raises(PairforgeError, match=r"not UTF-8 text \(byte 0xe9 at offset 9\)"):
        read_spec(root)
    spec_file.unlink()
    spec_file.symlink_to("dataset.yaml")
    with pytest.raises(PairforgeError, match="broken or self-referencing symbolic link"):
        read_spec(root)
    spec_file.unlink()
    spec_file.mkdir()
    with pytest.raises(PairforgeError, match="dataset.yaml: is a folder"):
        load_dataset(root)


@pytest.mark.parametrize(
    ("low", "high", "words"),
    [
        ([0.0, 1.0], [1.0, 1.0], "channel 'depth': low 1.0 and high 1.0"),
        ([0.0, float("nan")], [1.0, 1.0], "channel 'depth': low nan"),
        ([0.0, 0.0], [float("inf"), 1.0], "channel 'intensity': low 0.0 and high inf"),
        ([2.0, 0.0], [1.0, 1.0], "channel 'intensity': low 2.0 and high 1.0"),
    ],
)
def test_normalization_must_be_finite_with_high_above_low(tmp_path, low, high, words):
    with pytest.raises(ValidationError, match=words):
        SPEC.model_validate({**SPEC.model_dump(), "normalization": {"low": low, "high": high}})
    root = write_good(tmp_path / "ds")
    edit_yaml(root, lambda raw: raw.update(normalization={"low": low, "high": high}))
    with pytest.raises(PairforgeError) as err:
        load_dataset(root)
    assert words in str(err.value) and "high > low" in str(err.value)
    assert "(got {" not in str(err.value)  # the whole file is not dumped into the message


# -- sample ids -----------------------------------------------------------------------------
BAD_IDS = ["../shared/m006", "../../other/images/m000", "/etc/passwd", "a/b", "a\\b", "..", ".",
           ".hidden", "", "a\0b"]  # fmt: skip


@pytest.mark.parametrize("sample_id", BAD_IDS)
def test_sample_ids_must_be_plain_names(tmp_path, sample_id):
    assert sample_id_problem(sample_id)
    with pytest.raises(ValidationError, match="is not allowed"):
        DatasetSpec.model_validate({**SPEC.model_dump(), "splits": {"train": [sample_id]}})
    with DatasetWriter(tmp_path / "out", SPEC) as writer:
        with pytest.raises(PairforgeError, match=r"sample id .* is not allowed .*plain file-name"):
            writer.add(sample_id, np.zeros((2, 4, 4), np.float32))
    assert not (tmp_path / "shared").exists() and not (tmp_path / "other").exists()


@pytest.mark.parametrize("sample_id", ["m006", "sample-000001", "a.b", "scan 3", "grün_2", "x..y"])
def test_ordinary_ids_are_accepted(sample_id):
    assert sample_id_problem(sample_id) is None


def test_traversal_id_reads_nothing_outside(tmp_path):
    """The corpus' case: an id that points at another dataset's file is refused at load."""
    other = write_good(tmp_path / "other")
    root = write_good(tmp_path / "shared" / "ds")
    (tmp_path / "shared" / "m006.tif").write_bytes((other / "images" / "m0.tif").read_bytes())
    edit_yaml(root, lambda raw: raw["splits"]["train"].append("../../m006"))
    with pytest.raises(PairforgeError, match=r"'\.\./\.\./m006' is not allowed"):
        load_dataset(root)


# -- folders and links ----------------------------------------------------------------------
def test_masks_symlink_loop_is_an_error_not_an_unlabeled_dataset(tmp_path):
    root = write_good(tmp_path / "ds")
    for p in (root / "masks").iterdir():
        p.unlink()
    (root / "masks").rmdir()
    (root / "masks").symlink_to("masks")
    with pytest.raises(PairforgeError, match=r"masks: is a broken or self-referencing"):
        load_dataset(root)


def test_masks_that_is_a_file_is_an_error(tmp_path):
    root = write_good(tmp_path / "ds")
    for p in (root / "masks").iterdir():
        p.unlink()
    (root / "masks").rmdir()
    (root / "masks").write_text("")
    with pytest.raises(PairforgeError, match="masks: is a file, expected the masks folder"):
        load_dataset(root)


def test_self_linked_image_and_mask_say_so(tmp_path):
    root = write_good(tmp_path / "ds")
    (root / "masks" / "m1.png").unlink()
    (root / "masks" / "m1.png").symlink_to("m1.png")
    ds = load_dataset(root)
    with pytest.raises(PairforgeError, match=r"m1\.png: is a broken or self-referencing"):
        ds.has_mask("m1")  # not "unlabeled"
    (root / "images" / "m0.tif").unlink()
    (root / "images" / "m0.tif").symlink_to("m0.tif")
    with pytest.raises(PairforgeError, match=r"m0\.tif: is a broken or self-referencing"):
        load_dataset(root)


def test_missing_masks_folder_still_means_unlabeled(tmp_path):
    root = write_good(tmp_path / "ds")
    for p in (root / "masks").iterdir():
        p.unlink()
    (root / "masks").rmdir()
    ds = load_dataset(root)
    assert not ds.has_mask("m0") and ds.read_mask("m0") is None


# -- unlisted, orphan and stray files -------------------------------------------------------
def test_sample_in_no_split_warns_on_load_and_is_a_check_problem(tmp_path):
    root = write_good(tmp_path / "ds")
    set_image(root, "extra", np.ones((2, SIZE, SIZE), np.float32))
    with pytest.warns(
        UserWarning, match=r"1 image file\(s\) in no split are skipped \(extra\.tif\)"
    ):
        ds = load_dataset(root)
    assert "extra" not in ds.ids()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # check reports it as a problem, without a second warning
        report = check_dataset(root)
    assert report["unlisted_files"] == ["extra.tif"] and not report["ok"]


def test_check_warns_of_orphan_masks_and_stray_temp_files(tmp_path):
    root = write_good(tmp_path / "ds")
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(root / "masks" / "ghost.png")
    (root / "images" / ".gen000003.tif.tmp4711").write_bytes(b"x")
    (root / "masks" / ".m0.png.tmp99").write_bytes(b"x")
    (root / "images" / "notes.txt").write_text("x")
    report = check_dataset(root)
    assert report["ok"]  # warnings, not problems
    assert report["orphan_masks"] == ["ghost.png"]
    assert report["stray_files"] == [
        "images/.gen000003.tif.tmp4711", "images/notes.txt", "masks/.m0.png.tmp99",
    ]  # fmt: skip
    text = format_report(report)
    assert "warning: " in text and "ghost.png" in text and "stray file(s)" in text


def test_check_does_not_flag_a_mask_whose_image_is_in_no_split(tmp_path):
    root = write_good(tmp_path / "ds")
    set_image(root, "extra", np.ones((2, SIZE, SIZE), np.float32))
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(root / "masks" / "extra.png")
    report = check_dataset(root)
    assert report["orphan_masks"] == [] and report["unlisted_files"] == ["extra.tif"]


# -- writing --------------------------------------------------------------------------------
def test_writer_output_that_is_a_file_or_under_one(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(PairforgeError, match=r"f: dataset folder cannot be written \(exists as a"):
        DatasetWriter(tmp_path / "f", SPEC)
    with pytest.raises(PairforgeError, match=r"f/sub: dataset folder cannot be written"):
        DatasetWriter(tmp_path / "f" / "sub", SPEC)


def test_writer_disk_full_names_the_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    writer = DatasetWriter(tmp_path / "out", SPEC)

    def full(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", full)
    with pytest.raises(PairforgeError, match=r"a\.tif: sample image cannot be written \(disk full"):
        writer.add("a", np.zeros((2, 4, 4), np.float32))
    assert list((tmp_path / "out" / "images").iterdir()) == []


def test_writer_round_trip_still_works(tmp_path):
    root = write_good(tmp_path / "ds")
    spec = yaml.safe_load((root / "dataset.yaml").read_text())
    assert spec["splits"] == {"train": ["m0", "m1"], "val": ["m2"], "test": ["m3"]}
    assert check_dataset(root)["ok"]
