"""Tests for auto-labeling: uncertainty filtering and the written dataset + manifest."""

import json

import numpy as np
import pytest
import torch

from pairforge.data.dataset import load_dataset
from pairforge.data.normalize import ChannelNormalizer
from pairforge.data.spec import DatasetSpec
from pairforge.diffusion.schedule import make_scheduler_config
from pairforge.errors import PairforgeError
from pairforge.models.factory import build_model
from pairforge.seg.autolabel import autolabel, label_images, select_confident
from pairforge.seg.ensemble import image_scores
from pairforge.seg.features import FeatureConfig
from pairforge.seg.head import HeadSettings, fit_head
from pairforge.seg.source import load_feature_source


def test_select_confident_drops_the_most_uncertain():
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.2])
    assert select_confident(scores, 0.4).tolist() == [True, False, True, False, True]
    assert select_confident(scores, 0.0).all()
    assert select_confident(np.array([1.0, 1.0, 0.0]), 0.34).tolist() == [False, True, True]
    with pytest.raises(PairforgeError, match="--drop 1.0"):
        select_confident(scores, 1.0)


def _tiny_run(run_dir):
    from pairforge.train.run import write_inference_model

    torch.manual_seed(0)
    model = build_model("UNet2DModel", "tiny", 2, 2, 16)
    spec = DatasetSpec(
        name="toy",
        channels=[{"name": "intensity"}, {"name": "depth", "unit": "um"}],
        classes=[{"id": 0, "name": "binder"}, {"id": 1, "name": "grain"}],
    )
    normalizer = ChannelNormalizer(low=[0.0, -10.0], high=[1.0, 10.0])
    info = {
        "model_class": "UNet2DModel",
        "task": "image",
        "normalizer": normalizer.to_dict(),
        "codec": None,
        "spec": spec.model_dump(mode="json"),
        "resolution": 16,
        "crop_size": 32,
        "image_channels": 2,
        "sample_channels": 2,
        "num_classes": 2,
    }
    write_inference_model(run_dir, model, make_scheduler_config(), info)
    return run_dir


def test_autolabel_writes_kept_samples_and_scores(tmp_path):
    run_dir = _tiny_run(tmp_path / "run")
    source = load_feature_source(run_dir)
    assert source.image_channels == 2 and source.normalizer is not None
    generator = torch.Generator().manual_seed(0)
    coarse = torch.randn(4, 2, 4, 4, generator=generator)
    images = torch.nn.functional.interpolate(coarse, size=(16, 16), mode="bilinear")
    head, _ = fit_head(
        source,
        images,
        (images[:, 0] > 0).long(),
        num_classes=2,
        feature_config=FeatureConfig(timesteps=(50,)),
        settings=HeadSettings(num_models=2, max_epochs=2),
        progress=False,
    )
    manifest = autolabel(
        head, tmp_path / "auto", 5, drop_fraction=0.4, sampler="ddim", steps=2, seed=10,
        progress=False,
    )  # fmt: skip
    assert manifest["num_kept"] == 3
    assert manifest["uncertainty"] == "js"  # the DatasetDDPM score is the default
    written = json.loads((tmp_path / "auto" / "manifest.json").read_text())
    assert written == manifest
    samples = written["samples"]
    assert [s["seed"] for s in samples] == [10, 11, 12, 13, 14]
    kept = [s for s in samples if s["kept"]]
    dropped = [s for s in samples if not s["kept"]]
    assert max(s["score"] for s in kept) <= min(s["score"] for s in dropped)
    dataset = load_dataset(tmp_path / "auto")
    assert dataset.ids("train") == [s["id"] for s in kept]
    assert dataset.num_classes == 2
    # The written mask is the head's labeling of the written image.
    image = dataset.read_image(kept[0]["id"])
    mask = dataset.read_mask(kept[0]["id"])
    relabeled = head.segment(torch.from_numpy(dataset.normalizer.encode(image))[None]).labels[0]
    assert (relabeled.numpy() == mask).mean() > 0.99
    # Dropped samples leave no files; a repeated call resumes: nothing drawn, the same result.
    assert not list((tmp_path / "auto" / "images").glob(f"{dropped[0]['id']}.*"))
    again = autolabel(
        head, tmp_path / "auto", 5, drop_fraction=0.4, sampler="ddim", steps=2, seed=10,
        progress=False,
    )  # fmt: skip
    assert again["generated_this_session"]["samples"] == 0
    assert again["samples"] == manifest["samples"]
    assert load_dataset(tmp_path / "auto").ids("train") == [s["id"] for s in kept]

    # Scores: mean of the top 10 % pixels of the JS map by default, entropy on request.
    prediction = head.segment(images)
    js_scores = label_images(head, images).scores
    torch.testing.assert_close(js_scores, image_scores(prediction.js))
    entropy_scores = label_images(head, images, uncertainty="entropy").scores
    torch.testing.assert_close(entropy_scores, image_scores(prediction.entropy))
    assert not torch.allclose(js_scores, entropy_scores)
    with pytest.raises(PairforgeError, match="--uncertainty 'variance'"):
        label_images(head, images, uncertainty="variance")
