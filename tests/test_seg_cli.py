"""CLI smoke tests: `pairforge seg fit / eval / predict / baseline / autolabel` on a tiny run."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pairforge.cli import app
from pairforge.data.dataset import DatasetWriter
from pairforge.data.normalize import ChannelNormalizer
from pairforge.data.spec import DatasetSpec
from pairforge.diffusion.schedule import make_scheduler_config
from pairforge.errors import PairforgeError
from pairforge.models.factory import build_model

SPEC = DatasetSpec(
    name="toy",
    channels=[{"name": "intensity"}, {"name": "depth", "unit": "um"}],
    classes=[{"id": 0, "name": "binder"}, {"id": 7, "name": "grain"}],
)


def _tiny_run(run_dir):
    from pairforge.train.run import write_inference_model

    torch.manual_seed(0)
    model = build_model("image", "tiny", 2, 2, 16)
    info = {
        "model_class": "UNet2DModel",
        "task": "image",
        "normalizer": ChannelNormalizer(low=[0.0, -10.0], high=[1.0, 10.0]).to_dict(),
        "codec": None,
        "spec": SPEC.model_dump(mode="json"),
        "resolution": 16,
        "crop_size": 32,
        "image_channels": 2,
        "sample_channels": 2,
        "num_classes": 2,
    }
    write_inference_model(run_dir, model, make_scheduler_config(), info)


def _toy_dataset(path):
    rng = np.random.default_rng(0)
    splits = ["train"] * 3 + ["val", "test"]
    with DatasetWriter(path, SPEC) as writer:
        for index, split in enumerate(splits):
            coarse = rng.standard_normal((4, 8))
            field = np.kron(coarse, np.ones((16, 16)))  # 64 x 128, blocky blobs
            image = np.stack([0.5 + 0.3 * field, 5.0 * field]).astype(np.float32)
            writer.add(f"m{index}", image, (field > 0).astype(np.int64), split=split)


@pytest.fixture()
def setup(tmp_path):
    _tiny_run(tmp_path / "run")
    _toy_dataset(tmp_path / "data")
    return tmp_path


def _invoke(args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.output


def test_fit_eval_predict_autolabel_and_baseline(setup):
    tmp = setup
    out = _invoke([
        "seg", "fit", "--run", tmp / "run", "--data", tmp / "data", "--out", tmp / "head",
        "--max-images", 10, "--num-models", 2, "--epochs", 3, "--timesteps", "50,150",
    ])  # fmt: skip
    assert "head written to" in out and "10 tiles" in out
    meta = json.loads((tmp / "head" / "head.json").read_text())
    assert meta["class_names"] == ["binder", "grain"] and meta["crop_size"] == 32
    assert len(meta["train_tiles"]) == 10

    report = json.loads(
        _invoke(["seg", "eval", tmp / "head", "--data", tmp / "data", "--split", "test", "--json"])
    )
    assert report["num_images"] == 8  # 64 x 128 px test measurement in 32 px tiles
    assert set(report["per_class_iou"]) == {"binder", "grain"}
    assert 0.0 <= report["mean_iou"] <= 1.0

    _invoke(["seg", "predict", tmp / "head", "--data", tmp / "data", "--split", "test",
             "--out", tmp / "pred"])  # fmt: skip
    from PIL import Image

    mask = np.asarray(Image.open(tmp / "pred" / "masks" / "m4.png"))
    assert mask.shape == (64, 128) and set(np.unique(mask)) <= {0, 1}
    assert "m4" in json.loads((tmp / "pred" / "scores.json").read_text())["scores"]

    _invoke(["seg", "autolabel", tmp / "head", "--n", 3, "--drop", 0.34, "--out", tmp / "auto",
             "--sampler", "ddim", "--steps", 2])  # fmt: skip
    manifest = json.loads((tmp / "auto" / "manifest.json").read_text())
    assert manifest["num_kept"] == 2 and len(manifest["samples"]) == 3

    baseline = json.loads(
        _invoke(
            [
                "seg",
                "baseline",
                "--run",
                tmp / "run",
                "--data",
                tmp / "data",
                "--max-images",
                10,
                "--epochs",
                2,
                "--json",
                "--out",
                tmp / "sup",
            ]
        )  # fmt: skip
    )
    assert baseline["num_images"] == report["num_images"]  # same test tiles as the head
    assert baseline["best_epoch"] in (1, 2)
    from pairforge.seg.supervised import load_supervised

    model, config = load_supervised(tmp / "sup")
    assert config["num_classes"] == 2 and config["crop_size"] == 32


def test_bad_input_raises_pairforge_error(setup):
    tmp = setup
    with pytest.raises(PairforgeError, match="not a segmentation head"):
        _invoke(["seg", "eval", tmp / "data", "--data", tmp / "data"])
    with pytest.raises(PairforgeError, match="no split named"):
        _invoke(["seg", "fit", "--run", tmp / "run", "--data", tmp / "data", "--split", "nope",
                 "--out", tmp / "head"])  # fmt: skip
