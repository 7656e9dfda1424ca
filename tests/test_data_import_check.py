"""Importers, `pairforge data check`, and the data CLI's error messages."""

import json

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from pairforge.cli import app
from pairforge.data.check import check_dataset
from pairforge.data.dataset import load_dataset
from pairforge.data.importers import import_color_masks, import_grains, parse_class_map
from pairforge.errors import PairforgeError

runner = CliRunner()


def grain_pngs(folder, n=2, size=(12, 20), target_values=(0, 255)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for i in range(n):
        inten = rng.integers(0, 256, size, dtype=np.uint8)
        depth = rng.integers(0, 256, size, dtype=np.uint8)
        target = rng.choice(np.array(target_values, np.uint8), size)
        Image.fromarray(inten).save(folder / f"{i}_intensity.png")
        Image.fromarray(depth).save(folder / f"{i}_depth.png")
        Image.fromarray(target).save(folder / f"{i}_target.png")
        arrays[str(i)] = (inten, depth, target)
    return arrays


def test_import_grain_pngs(tmp_path):
    arrays = grain_pngs(tmp_path / "raw", n=3)
    import_grains(tmp_path / "raw", tmp_path / "ds", "png", test=["2"])
    ds = load_dataset(tmp_path / "ds")
    assert [c.name for c in ds.spec.classes] == ["binder", "grain"]
    assert ds.ids("test") == ["2"] and sorted(ds.ids("train")) == ["0", "1"]
    image, mask = ds.read_pair("1")
    inten, depth, target = arrays["1"]
    np.testing.assert_array_equal(image[0], inten)
    np.testing.assert_array_equal(image[1], depth)
    np.testing.assert_array_equal(mask, (target == 255).astype(np.int64))


def test_import_grain_text_matrices(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    rng = np.random.default_rng(1)
    inten, depth = rng.normal(size=(5, 7)), rng.normal(size=(5, 7)) * 10
    target = rng.integers(0, 2, (5, 7))
    np.savetxt(raw / "m1_intensity.txt", inten, delimiter="\t")
    np.savetxt(raw / "m1_depth.txt", depth, delimiter="\t")
    np.savetxt(raw / "m1_target.txt", target, delimiter="\t", fmt="%d")
    import_grains(raw, tmp_path / "ds", "txt")
    image, mask = load_dataset(tmp_path / "ds").read_pair("m1")
    np.testing.assert_allclose(image, np.stack([inten, depth]), rtol=1e-6)
    np.testing.assert_array_equal(mask, target)


def test_import_grain_errors(tmp_path):
    grain_pngs(tmp_path / "raw", n=1, target_values=(0, 3, 255))
    with pytest.raises(PairforgeError, match=r"target values \[0, 3, 255\] are not binary"):
        import_grains(tmp_path / "raw", tmp_path / "ds", "png")
    import_grains(tmp_path / "raw", tmp_path / "ds", "png", parse_class_map("0:a,3:b,255:c"))
    assert load_dataset(tmp_path / "ds").num_classes == 3
    (tmp_path / "raw" / "0_depth.png").unlink()
    with pytest.raises(PairforgeError, match="sample '0' lacks its depth file"):
        import_grains(tmp_path / "raw", tmp_path / "ds2", "png")
    with pytest.raises(PairforgeError, match="value:name"):
        parse_class_map("0=binder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PairforgeError, match="no grain files found"):
        import_grains(tmp_path / "empty", tmp_path / "ds3", "png")


def test_import_color_masks(tmp_path):
    src = tmp_path / "faces"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    palette = tmp_path / "palette.yaml"
    palette.write_text(yaml.safe_dump({"background": [0, 0, 0], "skin": [204, 0, 0]}))
    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(src / "images" / "a.png")
    m = np.zeros((8, 8, 3), np.uint8)
    m[2:5, 2:5] = (204, 0, 0)
    Image.fromarray(m).save(src / "masks" / "a.png")
    import_color_masks(src, tmp_path / "ds", palette)
    image, mask = load_dataset(tmp_path / "ds").read_pair("a")
    assert image.shape == (3, 8, 8)
    np.testing.assert_array_equal(np.moveaxis(image, 0, -1), rgb)
    assert mask.sum() == 9 and mask[3, 3] == 1
    m[0, 0] = (1, 1, 1)
    Image.fromarray(m).save(src / "masks" / "a.png")
    with pytest.raises(PairforgeError, match=r"unknown mask colors \(1, 1, 1\)"):
        import_color_masks(src, tmp_path / "ds2", palette)


def test_check_reports_summary_and_every_problem(tmp_path):
    grain_pngs(tmp_path / "raw", n=3)
    import_grains(tmp_path / "raw", tmp_path / "ds", "png")
    report = check_dataset(tmp_path / "ds")
    assert report["ok"] and report["samples"] == 3 and report["labeled"] == 3
    assert report["sizes"] == {"height": [12, 12], "width": [20, 20]}
    assert abs(sum(c["pixel_fraction"] for c in report["classes"]) - 1) < 1e-9
    assert report["channels"][0]["max"] <= 255
    # Break two samples in different ways: both problems are listed with their files.
    (tmp_path / "ds" / "images" / "0.tif").write_bytes(b"garbage")
    Image.fromarray(np.full((12, 20), 9, np.uint8)).save(tmp_path / "ds" / "masks" / "1.png")
    report = check_dataset(tmp_path / "ds")
    assert not report["ok"] and len(report["problems"]) == 2
    assert "0.tif: cannot be read" in report["problems"][0]
    assert "1.png: unknown class ids 9" in report["problems"][1]


def test_cli_check_json_and_errors(tmp_path):
    grain_pngs(tmp_path / "raw", n=2)
    result = runner.invoke(
        app, ["data", "import", "grain-png", str(tmp_path / "raw"), str(tmp_path / "ds")]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["data", "check", str(tmp_path / "ds"), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.output)["samples"] == 2
    # Errors are PairforgeError (printed as `error: ...` by the console entry point).
    result = runner.invoke(app, ["data", "check", str(tmp_path / "missing")])
    assert result.exit_code != 0
    assert isinstance(result.exception, PairforgeError) and "not found" in str(result.exception)


def test_console_entry_point_prints_error_without_traceback(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "pairforge.cli", "data", "check", str(tmp_path / "missing")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
