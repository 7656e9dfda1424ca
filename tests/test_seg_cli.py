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
    model = build_model("UNet2DModel", "tiny", 2, 2, 16)
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
        "--labels", 10, "--num-models", 2, "--epochs", 3, "--timesteps", "50,150",
    ])  # fmt: skip
    # 10 labeled tiles: every 4th (2) selects, 8 are fit tiles.
    assert "head written to" in out and "10 labeled tiles of 32 px (8 fit + 2 select)" in out
    meta = json.loads((tmp / "head" / "head.json").read_text())
    assert meta["class_names"] == ["binder", "grain"] and meta["crop_size"] == 32
    assert len(meta["train_tiles"]) == 8 and len(meta["label_budget"]["tiles"]) == 10

    report = json.loads(
        _invoke(["seg", "eval", tmp / "head", "--data", tmp / "data", "--split", "test", "--json"])
    )
    assert report["num_images"] == 8  # 64 x 128 px test measurement in 32 px tiles
    assert set(report["per_class_iou"]) == {"binder", "grain"}
    # The reported IoU is |pred & true| / |pred | true| per class of the head's own labels.
    labels, tiles = _head_labels(tmp / "head", tmp / "data")
    truth = tiles.masks.numpy()
    by_hand = [
        ((labels == k) & (truth == k)).sum() / ((labels == k) | (truth == k)).sum() for k in (0, 1)
    ]
    assert report["per_class_iou"]["binder"] == pytest.approx(by_hand[0], abs=1e-9)
    assert report["mean_iou"] == pytest.approx(np.mean(by_hand), abs=1e-9)
    assert report["combine"] == "mean"

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
    assert manifest["uncertainty"] == "js"
    # The labels behind the auto-labels: the head's hash and budget.
    assert manifest["head"]["label_budget"] == meta["label_budget"]
    assert len(manifest["head"]["sha256"]) == 64

    baseline = json.loads(
        _invoke(
            [
                "seg",
                "baseline",
                "--run",
                tmp / "run",
                "--data",
                tmp / "data",
                "--labels",
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
    assert baseline["labels"]["tiles"] == 10 and baseline["labels"]["pixels"] == 10 * 32 * 32
    from pairforge.core.supervised import load_supervised

    model, config = load_supervised(tmp / "sup")
    assert config["num_classes"] == 2 and config["crop_size"] == 32


def _head_labels(head_dir, data, split="test", combine="mean"):
    """The head's labels (N, 16, 16) of a split's tiles, exactly as `seg eval` computes them."""
    from pairforge.seg.data import labeled_tiles
    from pairforge.seg.head import SegmentationHead

    head = SegmentationHead.load(head_dir)
    tiles = labeled_tiles(data, split, 32, 16, head.normalizer)
    return head.segment(tiles.images, combine=combine).labels.numpy(), tiles


def _relabeled_dataset(path, source_data, labels, tiles, swap=False):
    """The test measurement of `source_data` with a mask painted from tile labels (2x nearest)."""
    from pairforge.data.dataset import load_dataset

    dataset = load_dataset(source_data)
    ((sample_id, *_),) = {s[:1] for s in tiles.source}
    image = dataset.read_image(sample_id)
    mask = np.zeros(image.shape[1:], np.int64)
    for tile_labels, (_, y, x) in zip(labels, tiles.source, strict=True):
        mask[y : y + 32, x : x + 32] = np.kron(tile_labels, np.ones((2, 2), np.int64))
    if swap:
        mask = 1 - mask
    with DatasetWriter(path, SPEC) as writer:
        writer.add(sample_id, image, mask, split="test")


@pytest.mark.parametrize("combine", ["mean", "vote"])
def test_eval_of_a_head_on_its_own_labels_is_exactly_one(setup, combine):
    tmp = setup
    _invoke([
        "seg", "fit", "--run", tmp / "run", "--data", tmp / "data", "--out", tmp / "head",
        "--labels", 10, "--num-models", 3, "--epochs", 2, "--timesteps", "50,150",
    ])  # fmt: skip
    labels, tiles = _head_labels(tmp / "head", tmp / "data", combine=combine)
    assert set(np.unique(labels)) == {0, 1}  # both classes present: 1.0 is not vacuous
    _relabeled_dataset(tmp / "own", tmp / "data", labels, tiles)
    _relabeled_dataset(tmp / "swapped", tmp / "data", labels, tiles, swap=True)

    def evaluate(data):
        args = ["seg", "eval", tmp / "head", "--data", data, "--json", "--combine", combine]
        return json.loads(_invoke(args))

    own = evaluate(tmp / "own")
    assert own["mean_iou"] == 1.0
    assert own["per_class_iou"] == {"binder": 1.0, "grain": 1.0}
    swapped = evaluate(tmp / "swapped")
    assert swapped["mean_iou"] == 0.0 and swapped["combine"] == combine


def test_fit_with_noise_levels_records_resolved_timesteps(setup):
    tmp = setup
    out = _invoke([
        "seg", "fit", "--run", tmp / "run", "--data", tmp / "data", "--out", tmp / "head",
        "--labels", 4, "--num-models", 1, "--epochs", 1, "--noise-levels", "baranchuk",
    ])  # fmt: skip
    # The tiny run uses the linear schedule: the published levels are t = 50, 150, 250 there.
    assert "at t [50, 150, 250] (abar 0.970, 0.786, 0.521)" in out
    features = json.loads((tmp / "head" / "head.json").read_text())["features"]
    assert features["noise_levels"] == "baranchuk"
    assert features["timesteps"] == [50, 150, 250]
    assert [round(a, 3) for a in features["abar"]] == [0.970, 0.786, 0.521]
    assert [round(v, 2) for v in features["logsnr"]] == [3.47, 1.30, 0.09]
    _invoke([
        "seg", "fit", "--run", tmp / "run", "--data", tmp / "data", "--out", tmp / "head2",
        "--labels", 4, "--num-models", 1, "--epochs", 1, "--noise-levels", "logsnr:2,0",
    ])  # fmt: skip
    features = json.loads((tmp / "head2" / "head.json").read_text())["features"]
    assert [round(v) for v in features["logsnr"]] == [2, 0]
    with pytest.raises(PairforgeError, match="both given; pass one"):
        _invoke(["seg", "fit", "--run", tmp / "run", "--data", tmp / "data", "--timesteps",
                 "50", "--noise-levels", "baranchuk"])  # fmt: skip
    with pytest.raises(PairforgeError, match="--noise-levels: noise levels 'abar:2'"):
        _invoke(["seg", "fit", "--run", tmp / "run", "--data", tmp / "data",
                 "--noise-levels", "abar:2"])  # fmt: skip


def test_bad_input_raises_pairforge_error(setup):
    tmp = setup
    with pytest.raises(PairforgeError, match="not a segmentation head"):
        _invoke(["seg", "eval", tmp / "data", "--data", tmp / "data"])
    with pytest.raises(PairforgeError, match="no split named"):
        _invoke(["seg", "fit", "--run", tmp / "run", "--data", tmp / "data", "--label-split", "nope",
                 "--out", tmp / "head"])  # fmt: skip
