"""The bad-input corpus for datasets: each malformed dataset x command gives a clear error, no traceback.

Every case builds one broken dataset (or output path) in tmp_path from a small valid one, runs a
real command through the console entry point (`pairforge.cli.main`, in process: PairforgeError ->
`error: ...` and exit code 2; anything else would escape as a traceback and fail the test), and
checks the exit code and the words the message must contain. `data check` lists per-sample
problems and exits 1; errors that stop it from reading the dataset at all exit 2; warnings exit 0.
`train` and `seg fit` cases all fail while loading data, so they run in well under a second.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from PIL import Image
from test_seg_cli import _tiny_run

from pairforge.cli import main
from pairforge.data.dataset import DatasetWriter
from pairforge.data.spec import DatasetSpec

SIZE = 32  # the tiny config's crop size: the smallest image that train and seg fit accept
SPEC = DatasetSpec(
    name="bad",
    channels=[{"name": "intensity", "unit": "a.u."}, {"name": "depth", "unit": "um"}],
    classes=[{"id": 0, "name": "binder"}, {"id": 7, "name": "grain"}],
)
SPLITS = {"m0": "train", "m1": "train", "m2": "val", "m3": "test"}


def write_good(root: Path, spec: DatasetSpec = SPEC) -> Path:
    """A valid 4-sample dataset (32 x 32, 2 channels, classes 0 and 7); m0 is the one to break."""
    rng = np.random.default_rng(0)
    with DatasetWriter(root, spec) as writer:
        for sample_id, split in SPLITS.items():
            field_ = np.kron(rng.standard_normal((4, 4)), np.ones((8, 8)))
            image = np.stack([0.5 + 0.3 * field_, 5.0 * field_]).astype(np.float32)
            writer.add(sample_id, image, (field_ > 0).astype(np.int64), split=split)
    return root


def edit_yaml(root: Path, change) -> None:
    raw = yaml.safe_load((root / "dataset.yaml").read_text())
    change(raw)
    (root / "dataset.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def set_image(root: Path, image: np.ndarray, sample_id: str = "m0") -> None:
    path = root / "images" / f"{sample_id}.tif"
    tifffile.imwrite(path, image.astype(np.float32), photometric="minisblack")


def good_image() -> np.ndarray:
    return np.random.default_rng(1).random((2, SIZE, SIZE)).astype(np.float32)


def short_png(path: Path, rows: np.ndarray, height: int) -> None:
    """A well-formed PNG (valid chunks and checksums) whose pixel data holds only `rows`.

    Pillow decodes it without complaint, filling the missing rows with 0 (class 0 in a mask).
    """

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")
        )

    width = rows.shape[1]
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    raw = b"".join(b"\x00" + row.astype(np.uint8).tobytes() for row in rows)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )  # fmt: skip


# -- how each bad dataset is made (root: a valid dataset to break; returns the path to pass) -----
def nan_pixels(root):
    image = good_image()
    image[1, :1, :3] = np.nan
    image[0, 5, 5] = np.inf
    set_image(root, image)


def all_nan_channel(root):
    image = good_image()
    image[1] = np.nan
    set_image(root, image)


def truncated_mask_short_stream(root):
    mask = np.asarray(Image.open(root / "masks" / "m0.png"))
    short_png(root / "masks" / "m0.png", mask[: SIZE // 2], SIZE)


def truncated_mask_cut(root):
    path = root / "masks" / "m0.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def corrupt_tiff(root):
    path = root / "images" / "m0.tif"
    path.write_bytes(path.read_bytes()[:300])


def tiff_header_only(root):
    (root / "images" / "m0.tif").write_bytes(b"II*\x00 no image file directory")


def corrupt_npy(root):
    (root / "images" / "m0.tif").unlink()
    (root / "images" / "m0.npy").write_bytes(b"\x93NUMPY garbage, not an array")


def truncated_npy(root):
    (root / "images" / "m0.tif").unlink()
    np.save(root / "images" / "m0.npy", good_image())
    path = root / "images" / "m0.npy"
    path.write_bytes(path.read_bytes()[:1000])


def yaml_is_folder(root):
    (root / "dataset.yaml").unlink()
    (root / "dataset.yaml").mkdir()


def yaml_not_utf8(root):
    text = (root / "dataset.yaml").read_text().replace("name: bad", "name: caf\u00e9")
    (root / "dataset.yaml").write_bytes(text.encode("latin-1"))


def unknown_key(root):
    edit_yaml(root, lambda raw: raw.update(chanels=[]))


def masks_symlink_loop(root):
    for p in (root / "masks").iterdir():
        p.unlink()
    (root / "masks").rmdir()
    (root / "masks").symlink_to("masks")


def self_linked_image(root):
    (root / "images" / "m0.tif").unlink()
    (root / "images" / "m0.tif").symlink_to("m0.tif")


def self_linked_mask(root):
    (root / "masks" / "m0.png").unlink()
    (root / "masks" / "m0.png").symlink_to("m0.png")


def norm_high_equals_low(root):
    edit_yaml(root, lambda raw: raw.update(normalization={"low": [0.0, 1.0], "high": [1.0, 1.0]}))


def norm_nan(root):
    edit_yaml(root, lambda raw: raw.update(normalization={"low": [0.0, 0.0], "high": [1.0, 1.0]}))
    text = (root / "dataset.yaml").read_text().replace("- 0.0\n  high", "- .nan\n  high")
    (root / "dataset.yaml").write_text(text)


def traversal_id(sample_id):
    def build(root):
        edit_yaml(root, lambda raw: raw["splits"]["train"].append(sample_id))

    return build


def no_train_split(root):
    def rename(raw):
        raw["splits"]["fit"] = raw["splits"].pop("train")

    edit_yaml(root, rename)


def wrong_channel_count(root):
    set_image(root, np.zeros((3, SIZE, SIZE)))


def mask_size_mismatch(root):
    Image.fromarray(np.zeros((SIZE, SIZE - 4), np.uint8)).save(root / "masks" / "m0.png")


def unknown_class_id(root):
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[:2, :2] = 9
    Image.fromarray(mask).save(root / "masks" / "m0.png")


def unknown_color(root):
    edit_yaml(
        root,
        lambda raw: raw.update(
            mask_encoding="color",
            classes=[
                {"id": 0, "name": "binder", "color": [0, 0, 0]},
                {"id": 7, "name": "grain", "color": [255, 0, 0]},
            ],
        ),  # fmt: skip
    )
    for sample_id in SPLITS:
        rgb = np.zeros((SIZE, SIZE, 3), np.uint8)
        rgb[4:8, 4:8] = (255, 0, 0)
        if sample_id == "m0":
            rgb[0, 0] = (1, 2, 3)
        Image.fromarray(rgb).save(root / "masks" / f"{sample_id}.png")


def missing_image(root):
    (root / "images" / "m0.tif").unlink()


def orphan_mask(root):
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(root / "masks" / "ghost.png")


def stray_temp_files(root):
    (root / "images" / ".gen000003.tif.tmp4711").write_bytes(b"half a tiff")
    (root / "masks" / "m9.png.tmp12").write_bytes(b"")


def unlisted_image(root):
    set_image(root, good_image(), sample_id="extra")


def out_is_file(root):
    (root.parent / "taken").write_text("not a folder")
    return root.parent / "taken"


def out_under_file(root):
    (root.parent / "taken").write_text("not a folder")
    return root.parent / "taken" / "sub"


def out_read_only(root, monkeypatch):
    # Tests run as root, where chmod does not stop writes: fake the file system's answer.
    import pairforge.io

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(pairforge.io.tempfile, "mkstemp", refuse)
    return root.parent / "ro-out"


# -- the commands ----------------------------------------------------------------------------
def check(path, tmp):
    return ["data", "check", path]


def train(path, tmp, *sets):
    args = ["train", "tiny", "--set", f"data.path={path}", "--out", tmp / "run"]
    for s in sets:
        args += ["--set", s]
    return args


def seg_fit(path, tmp):
    _tiny_run(tmp / "segrun")
    return ["seg", "fit", "--run", tmp / "segrun", "--data", path, "--out", tmp / "head",
            "--num-models", "1", "--epochs", "1", "--timesteps", "50"]  # fmt: skip


def grains(path, tmp):
    return ["data", "grains", path, "--preset", "tiny"]


def eval_fid(path, tmp):
    """`eval fid` with a valid real set and the broken dataset as the generated one."""
    real = write_good(tmp / "real")
    return ["eval", "fid", real, path, "--out", tmp / "fid"]


def one_pixel_image(root):
    """m0 shrunk to 1 x 1 px (image and mask): smaller than any tile."""
    set_image(root, good_image()[:, :1, :1])
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(root / "masks" / "m0.png")


@dataclass
class Case:
    build: object
    command: object
    code: int
    words: list[str]
    extra: list[str] = field(default_factory=list)  # trailing --set for train


TRUNC = "file is truncated or corrupt; re-export it"
NONFINITE = "non-finite pixel values"
CASES = {
    # NaN / inf: refused at load, with file, channel, count and the fix
    "nan-check": Case(nan_pixels, check, 1, ["m0.tif", NONFINITE, "3 of 1024 in channel 'depth'",
                                             "1 of 1024 in channel 'intensity'", "fill them"]),
    "nan-train": Case(nan_pixels, train, 2, ["m0.tif", NONFINITE, "channel 'depth'"]),
    "nan-seg-fit": Case(nan_pixels, seg_fit, 2, ["m0.tif", NONFINITE]),
    "all-nan-channel-train": Case(all_nan_channel, train, 2,
                                  ["m0.tif", "1024 of 1024 in channel 'depth'", "fill them"]),
    "all-nan-channel-check": Case(all_nan_channel, check, 1, ["1024 of 1024 in channel 'depth'"]),
    # truncated / corrupt files
    "png-mask-short-stream-check": Case(truncated_mask_short_stream, check, 1,
                                        ["m0.png", TRUNC, "16 of 32 rows"]),
    "png-mask-short-stream-train": Case(truncated_mask_short_stream, train, 2, ["m0.png", TRUNC]),
    "png-mask-short-stream-seg-fit": Case(truncated_mask_short_stream, seg_fit, 2,
                                          ["m0.png", TRUNC]),
    "png-mask-cut-check": Case(truncated_mask_cut, check, 1, ["m0.png", TRUNC]),
    "png-mask-cut-train": Case(truncated_mask_cut, train, 2, ["m0.png", TRUNC]),
    "tiff-corrupt-check": Case(corrupt_tiff, check, 1, ["m0.tif", TRUNC]),
    "tiff-header-only-check": Case(tiff_header_only, check, 1, ["m0.tif", "holds no pixels"]),
    "tiff-header-only-train": Case(tiff_header_only, train, 2, ["m0.tif", "holds no pixels"]),
    "tiff-corrupt-train": Case(corrupt_tiff, train, 2, ["m0.tif", TRUNC]),
    "npy-corrupt-check": Case(corrupt_npy, check, 1, ["m0.npy", TRUNC]),
    "npy-truncated-train": Case(truncated_npy, train, 2, ["m0.npy", TRUNC]),
    # dataset.yaml itself
    "yaml-is-folder-check": Case(yaml_is_folder, check, 2, ["dataset.yaml", "is a folder"]),
    "yaml-is-folder-train": Case(yaml_is_folder, train, 2, ["dataset.yaml", "is a folder"]),
    "yaml-not-utf8-check": Case(yaml_not_utf8, check, 2,
                                ["dataset.yaml", "not UTF-8", "0xe9", "save it as UTF-8"]),
    "yaml-unknown-key-check": Case(unknown_key, check, 2, ["dataset.yaml", "chanels",
                                                           "unknown key"]),
    "norm-high-equals-low-check": Case(norm_high_equals_low, check, 2,
                                       ["normalization of channel 'depth'", "high > low"]),
    "norm-nan-check": Case(norm_nan, check, 2, ["normalization of channel 'depth'", "low nan",
                                                "finite"]),
    "no-train-split-train": Case(no_train_split, train, 2,
                                 ["dataset.yaml", "'bad'", "split named 'train'", "val/test",
                                  "normalization:"], extra=["data.split=fit"]),
    # folders, links, files that are missing or extra
    "masks-symlink-loop-check": Case(masks_symlink_loop, check, 2, ["masks", "symbolic link"]),
    "masks-symlink-loop-train": Case(masks_symlink_loop, train, 2, ["masks", "symbolic link"]),
    "self-linked-image-check": Case(self_linked_image, check, 2,
                                    ["m0.tif", "broken or self-referencing symbolic link"]),
    "self-linked-image-train": Case(self_linked_image, train, 2, ["m0.tif", "symbolic link"]),
    "self-linked-mask-check": Case(self_linked_mask, check, 1, ["m0.png", "symbolic link"]),
    "self-linked-mask-train": Case(self_linked_mask, train, 2, ["m0.png", "symbolic link"]),
    "missing-image-check": Case(missing_image, check, 2, ["no image for sample 'm0'"]),
    "missing-image-train": Case(missing_image, train, 2, ["no image for sample 'm0'"]),
    "unlisted-image-check": Case(unlisted_image, check, 1, ["extra.tif", "in no split"]),
    "orphan-mask-check": Case(orphan_mask, check, 0, ["warning", "ghost.png",
                                                      "without an image"]),
    "stray-temp-files-check": Case(stray_temp_files, check, 0,
                                   ["warning", "stray", "images/.gen000003.tif.tmp4711",
                                    "masks/m9.png.tmp12", "delete them"]),
    # security: ids are plain names
    "id-dotdot-shared-check": Case(traversal_id("../shared/m006"), check, 2,
                                   ["'../shared/m006'", "path separator", "plain"]),
    "id-dotdot-other-train": Case(traversal_id("../../other/images/m000"), train, 2,
                                  ["'../../other/images/m000'", "path separator"]),
    "id-absolute-check": Case(traversal_id("/etc/passwd"), check, 2, ["'/etc/passwd'"]),
    "id-leading-dot-check": Case(traversal_id(".hidden"), check, 2, ["starts with a dot"]),
    # pixel content
    "wrong-channel-count-check": Case(wrong_channel_count, check, 1,
                                      ["m0.tif", "(3, 32, 32)", "expected 2 channel(s)"]),
    "wrong-channel-count-train": Case(wrong_channel_count, train, 2, ["expected 2 channel(s)"]),
    "mask-size-mismatch-check": Case(mask_size_mismatch, check, 1,
                                     ["m0.png", "28x32", "differs from its image 32x32"]),
    "mask-size-mismatch-train": Case(mask_size_mismatch, train, 2, ["differs from its image"]),
    "unknown-class-id-check": Case(unknown_class_id, check, 1, ["m0.png", "unknown class ids 9"]),
    "unknown-class-id-train": Case(unknown_class_id, train, 2, ["unknown class ids 9"]),
    "unknown-class-id-seg-fit": Case(unknown_class_id, seg_fit, 2, ["unknown class ids 9"]),
    "unknown-color-check": Case(unknown_color, check, 1, ["m0.png", "unknown mask colors (1, 2, 3)"]),
    "unknown-color-train": Case(unknown_color, train, 2, ["unknown mask colors (1, 2, 3)"]),
    "nan-eval-fid": Case(nan_pixels, eval_fid, 2, ["m0.tif", NONFINITE]),
    "one-pixel-image-seg-fit": Case(one_pixel_image, seg_fit, 2,
                                    ["sample 'm0'", "1 x 1 px", "32 px tiles", "remove it"]),
    # output folders of `data grains`
    "grains-out-is-file": Case(out_is_file, grains, 2, ["taken", "exists as a file",
                                                        "choose another folder"]),
    "grains-out-under-file": Case(out_under_file, grains, 2, ["taken/sub", "exists as a file"]),
    "grains-out-read-only": Case(out_read_only, grains, 2, ["ro-out", "read-only file system",
                                                            "writable"]),
}  # fmt: skip


def run_cli(args, monkeypatch, capsys) -> tuple[int, str]:
    """Run `pairforge ARGS` through the console entry point; (exit code, stdout + stderr)."""
    monkeypatch.setattr(sys, "argv", ["pairforge", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out + captured.err


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    case = CASES[name]
    root = write_good(tmp_path / "ds")
    build_args = (root, monkeypatch) if case.build is out_read_only else (root,)
    path = case.build(*build_args) or root
    if case.command is train:
        args = train(path, tmp_path, *case.extra)
    else:
        args = case.command(path, tmp_path)
    code, output = run_cli(args, monkeypatch, capsys)
    assert code == case.code, output
    for word in case.words:
        assert word in output, f"{word!r} not in:\n{output}"
    assert "Traceback" not in output
    if case.code == 2:
        assert [line for line in output.splitlines() if line.startswith("error: ")], output


def test_good_dataset_passes_check(tmp_path, monkeypatch, capsys):
    """The corpus' starting point is valid: every failure above comes from the one change."""
    root = write_good(tmp_path / "ds")
    code, output = run_cli(["data", "check", root], monkeypatch, capsys)
    assert code == 0 and "no problems found" in output and "warning" not in output


def test_console_script_nan_train_no_traceback(tmp_path):
    """One case through a real process: stderr is one `error:` line, exit 2."""
    root = write_good(tmp_path / "ds")
    nan_pixels(root)
    proc = subprocess.run(
        [sys.executable, "-m", "pairforge.cli", *map(str, train(root, tmp_path))],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and NONFINITE in proc.stderr
    assert proc.stderr.startswith("error: ")
