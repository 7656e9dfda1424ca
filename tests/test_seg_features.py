"""Tests for diffusion feature extraction: widths, shapes, noise, joint models, memory."""

import json

import numpy as np
import pytest
import torch

from pairforge.data.codec import MaskCodec
from pairforge.diffusion.schedule import alphas_cumprod, make_scheduler_config
from pairforge.errors import PairforgeError
from pairforge.models.factory import build_model
from pairforge.seg.features import (
    DiffusionFeatureExtractor,
    FeatureConfig,
    block_widths,
    class_fractions,
    mean_mask_code,
)
from pairforge.seg.noise_levels import baranchuk_abar, parse_noise_levels, resolve_noise_levels
from pairforge.seg.pixels import (
    estimate_feature_memory,
    extract_pixel_features,
    load_pixel_features,
)
from pairforge.seg.source import load_feature_source


def _tiny_unet(in_channels: int = 2, widths=(16, 32), seed: int = 0):
    torch.manual_seed(seed)
    overrides = {"block_out_channels": widths, "attention_levels": [False] * len(widths)}
    return build_model("UNet2DModel", "tiny", in_channels, in_channels, 16, overrides=overrides)


@pytest.mark.parametrize(
    "widths, blocks",
    [
        ((16, 32), None),
        ((16, 32), ("up_blocks.1",)),
        ((8, 16, 24), ("mid_block", "up_blocks.0", "up_blocks.2")),
        ((8, 16, 24), None),
    ],
)
def test_widths_from_config_match_the_hooked_outputs(widths, blocks):
    model = _tiny_unet(3, widths)
    extractor = DiffusionFeatureExtractor(
        model, make_scheduler_config(), config=FeatureConfig(timesteps=(10, 500), blocks=blocks)
    )
    # Independent check: hook the modules and read the channel counts they really produce.
    seen = {}
    modules = dict(model.named_modules())
    for name in extractor.blocks:
        modules[name].register_forward_hook(
            lambda _m, _i, out, name=name: seen.__setitem__(name, out.shape[1])
        )
    features = extractor.extract(torch.randn(2, 3, 16, 16))
    assert seen == extractor.widths
    expected_blocks = blocks or tuple(f"up_blocks.{i}" for i in range(len(widths)))
    assert extractor.blocks == expected_blocks
    assert extractor.feature_dim == 2 * sum(seen.values())
    assert features.shape == (2, extractor.feature_dim, 16, 16)
    assert features.dtype == torch.float32
    assert len(extractor.feature_names) == 2 * len(expected_blocks)


def test_block_widths_reads_reversed_decoder_widths():
    config = {"block_out_channels": [32, 64, 128], "mid_block_type": "UNetMidBlock2D"}
    assert block_widths(config) == {
        "up_blocks.0": 128,
        "up_blocks.1": 64,
        "up_blocks.2": 32,
        "mid_block": 128,
    }
    assert "mid_block" not in block_widths({"block_out_channels": [8, 16], "mid_block_type": None})


@pytest.mark.parametrize("channels", [1, 4])
def test_any_channel_count(channels):
    extractor = DiffusionFeatureExtractor(_tiny_unet(channels), make_scheduler_config())
    assert extractor.extract(torch.randn(1, channels, 8, 8)).shape == (1, 3 * 48, 8, 8)


def test_same_noise_seed_gives_identical_features_and_other_seed_differs():
    model = _tiny_unet()
    images = torch.randn(2, 2, 16, 16)

    def run(seed):
        config = FeatureConfig(noise_seed=seed)
        return DiffusionFeatureExtractor(model, make_scheduler_config(), config=config).extract(
            images
        )

    assert torch.equal(run(5), run(5))
    assert not torch.allclose(run(5), run(6))
    # One noise tensor for all images: an image's features do not depend on its batch mates.
    extractor = DiffusionFeatureExtractor(model, make_scheduler_config())
    together = extractor.extract(images)
    alone = extractor.extract(images[1:])
    torch.testing.assert_close(together[1:], alone, atol=1e-5, rtol=1e-4)


def _capture_model_input(model):
    inputs = []
    model.register_forward_pre_hook(lambda _m, args: inputs.append(args[0].clone()))
    return inputs


def test_noised_input_is_sqrt_alphabar_forward_process():
    # Pins x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (not abar_t x0, a published grain bug).
    model = _tiny_unet()
    scheduler_config = make_scheduler_config()
    extractor = DiffusionFeatureExtractor(
        model, scheduler_config, config=FeatureConfig(timesteps=(250,))
    )
    inputs = _capture_model_input(model)
    images = torch.rand(1, 2, 16, 16) * 2 - 1
    extractor.extract(images)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)[250]
    eps = extractor.noise(16, 16).double()
    expected = alpha_bar.sqrt() * images.double() + (1 - alpha_bar).sqrt() * eps
    torch.testing.assert_close(inputs[0].double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mask_fill", ["zeros", "noise"])
def test_joint_model_mask_channels_are_filled_as_documented(mask_fill):
    model = _tiny_unet(in_channels=5)  # 2 image channels + 3 one-hot mask channels
    extractor = DiffusionFeatureExtractor(
        model,
        make_scheduler_config(),
        image_channels=2,
        config=FeatureConfig(timesteps=(150,), mask_fill=mask_fill),
    )
    inputs = _capture_model_input(model)
    features = extractor.extract(torch.randn(2, 2, 16, 16))
    assert features.shape == (2, 48, 16, 16)
    eps = extractor.noise(16, 16)[2:]
    mask_part = inputs[0][:, 2:]
    if mask_fill == "noise":
        torch.testing.assert_close(mask_part, eps.expand_as(mask_part))
    else:
        betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
        scale = (1 - torch.cumprod(1 - betas, 0)[150]).sqrt().float()
        torch.testing.assert_close(mask_part, (scale * eps).expand_as(mask_part))


def test_bad_inputs_raise_helpful_errors():
    model = _tiny_unet()
    with pytest.raises(PairforgeError, match="available: up_blocks.0, up_blocks.1"):
        DiffusionFeatureExtractor(
            model, make_scheduler_config(), config=FeatureConfig(blocks=("up_blocks.7",))
        )
    with pytest.raises(PairforgeError, match="0..999"):
        DiffusionFeatureExtractor(
            model, make_scheduler_config(), config=FeatureConfig(timesteps=(1000,))
        )
    extractor = DiffusionFeatureExtractor(model, make_scheduler_config())
    with pytest.raises(PairforgeError, match="not divisible by 2"):
        extractor.extract(torch.randn(1, 2, 15, 16))
    with pytest.raises(PairforgeError, match=r"\(B, 2, H, W\)"):
        extractor.extract(torch.randn(1, 3, 16, 16))


def _toy_set(num_images=4, size=16):
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(num_images, 2, size, size, generator=generator)
    masks = (images[:, 0] > 0).long()
    masks[0, :4] = 255  # 64 ignored pixels in image 0
    return images, masks


@pytest.mark.parametrize("pixels_per_image", [None, 50])
def test_memory_estimate_equals_allocated_bytes(pixels_per_image):
    extractor = DiffusionFeatureExtractor(_tiny_unet(), make_scheduler_config())
    images, masks = _toy_set()
    pixel_features = extract_pixel_features(
        extractor, images, masks, pixels_per_image=pixels_per_image, progress=False
    )
    expected_pixels = 4 * 256 - 64 if pixels_per_image is None else 4 * 50
    assert pixel_features.features.shape == (expected_pixels, extractor.feature_dim)
    assert pixel_features.features.dtype == np.float16
    assert pixel_features.estimate.num_pixels == expected_pixels
    # Bytes of the arrays the code really allocated (not the estimate's own formula).
    arrays = [pixel_features.features, pixel_features.labels, pixel_features.image_index,
              pixel_features.pixel_index]  # fmt: skip
    assert pixel_features.estimate.stored_bytes == sum(a.nbytes for a in arrays)
    assert pixel_features.estimate.stored_bytes == pixel_features.allocated_bytes
    # The working batch: the extractor's float32 (B, D, H, W) output, held twice (parts + cat).
    batch = extractor.extract(images[: min(8, len(images))])
    assert pixel_features.estimate.working_bytes == 2 * batch.numel() * batch.element_size()
    assert (pixel_features.labels != 255).all()
    assert np.bincount(pixel_features.image_index).tolist() == (
        [192, 256, 256, 256] if pixels_per_image is None else [50] * 4
    )


@pytest.mark.parametrize("pixels_per_image", [None, 50])
def test_each_feature_row_is_the_pixel_it_records(pixels_per_image):
    extractor = DiffusionFeatureExtractor(_tiny_unet(), make_scheduler_config())
    images, masks = _toy_set()
    pixels = extract_pixel_features(
        extractor, images, masks, pixels_per_image=pixels_per_image, seed=3, progress=False
    )
    full = extractor.extract(images).reshape(len(images), extractor.feature_dim, -1)
    flat_masks = masks.reshape(len(masks), -1)
    image, where = (
        torch.from_numpy(pixels.image_index).long(),
        torch.from_numpy(pixels.pixel_index).long(),
    )
    # Row r: label = mask at (image r, pixel r); features = extractor output at that pixel.
    assert torch.equal(torch.from_numpy(pixels.labels), flat_masks[image, where])
    expected = full[image, :, where].to(torch.float16).numpy()
    np.testing.assert_array_equal(pixels.features, expected)
    for index in range(len(images)):
        chosen = pixels.pixel_index[pixels.image_index == index]
        assert len(np.unique(chosen)) == len(chosen)  # without replacement
    # The label tensor is not constant, so a shifted pixel index would be caught.
    assert 0 < pixels.labels.mean() < 1


def test_memory_cache_on_disk_and_budget_error(tmp_path):
    extractor = DiffusionFeatureExtractor(_tiny_unet(), make_scheduler_config())
    images, masks = _toy_set()
    in_ram = extract_pixel_features(extractor, images, masks, progress=False)
    cached = extract_pixel_features(
        extractor, images, masks, cache_dir=tmp_path / "cache", progress=False
    )
    assert isinstance(cached.features, np.memmap)
    assert cached.estimate.on_disk and cached.estimate.ram_bytes == cached.estimate.working_bytes
    reopened = load_pixel_features(tmp_path / "cache")
    np.testing.assert_array_equal(reopened.features, in_ram.features)
    np.testing.assert_array_equal(reopened.labels, in_ram.labels)
    # Over budget: stops before allocating, says how much and what lowers it.
    need = in_ram.estimate.ram_bytes
    with pytest.raises(PairforgeError) as info:
        extract_pixel_features(
            extractor, images, masks, memory_budget_bytes=need - 1, progress=False
        )
    message = str(info.value)
    assert f"{need / 2**30:.2f} GiB" in message
    assert "--cache" in message and "--pixels-per-image" in message


def test_hundred_labeled_64px_images_fit_well_inside_24_gib():
    # Widest preset ("base"), three timesteps, every pixel; widths read from the model config.
    base = build_model("UNet2DModel", "base", 2, 2, 64)
    feature_dim = 3 * sum(w for n, w in block_widths(base.config).items() if n != "mid_block")
    estimate = estimate_feature_memory([64 * 64] * 100, feature_dim, (64, 64), batch_size=8)
    assert estimate.ram_bytes < 4 * 2**30
    # Per stored pixel: the itemsizes of the arrays a real extraction allocates.
    extractor = DiffusionFeatureExtractor(_tiny_unet(), make_scheduler_config())
    images, masks = _toy_set(num_images=1)
    real = extract_pixel_features(extractor, images, masks, progress=False)
    per_pixel = real.features.itemsize * feature_dim + sum(
        a.itemsize for a in (real.labels, real.image_index, real.pixel_index)
    )
    assert estimate.stored_bytes == 100 * 64 * 64 * per_pixel


def test_load_feature_source_from_diffusers_directory(tmp_path):
    model = _tiny_unet(3)
    model.save_pretrained(tmp_path / "plain")
    source = load_feature_source(tmp_path / "plain")
    assert source.image_channels == 3
    assert source.scheduler_config["num_train_timesteps"] == 1000
    assert source.scheduler_config["beta_schedule"] == "linear"
    model.save_pretrained(tmp_path / "with_sched")
    config = make_scheduler_config("cosine")
    (tmp_path / "with_sched" / "scheduler_config.json").write_text(json.dumps(config))
    source = load_feature_source(tmp_path / "with_sched")
    assert source.scheduler_config["beta_schedule"] == "squaredcos_cap_v2"
    images = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(
        DiffusionFeatureExtractor(source.model, source.scheduler_config).extract(images),
        DiffusionFeatureExtractor(model, config).extract(images),
    )
    with pytest.raises(PairforgeError, match="neither a pairforge run"):
        load_feature_source(tmp_path)


# ---------------------------------------------------------------------------------------------
# Schedule-independent noise levels.


def _abar(schedule, num_train_timesteps=1000):
    return alphas_cumprod(make_scheduler_config(schedule, num_train_timesteps=num_train_timesteps))


def test_baranchuk_preset_is_the_published_linear_schedule_levels():
    # Published: t = 50 / 150 / 250 on the linear schedule -> abar 0.970 / 0.786 / 0.521.
    assert [round(a, 3) for a in baranchuk_abar()] == [0.970, 0.786, 0.521]
    assert parse_noise_levels("baranchuk") == ("abar", baranchuk_abar())
    # Back on the linear schedule they are exactly Baranchuk's timesteps; on cosine much later.
    assert resolve_noise_levels("baranchuk", _abar("linear")) == (50, 150, 250)
    assert resolve_noise_levels("baranchuk", _abar("cosine")) == (103, 300, 481)


def test_noise_levels_resolve_to_the_nearest_timestep_in_their_own_space():
    abar = _abar("cosine")
    logsnr = (abar / (1 - abar)).log()
    assert resolve_noise_levels(
        "abar:" + ",".join(str(float(abar[t])) for t in (7, 420)), abar
    ) == (
        7,
        420,
    )
    assert resolve_noise_levels(f"logsnr:{float(logsnr[333]):.10f}", abar) == (333,)
    # Between two grid points: the nearer one wins (abar 1/4 of the way from t=200 to t=201).
    a = float(abar[200] + 0.25 * (abar[201] - abar[200]))
    assert resolve_noise_levels(f"abar:{a}", abar) == (200,)
    a = float(abar[200] + 0.75 * (abar[201] - abar[200]))
    assert resolve_noise_levels(f"abar:{a}", abar) == (201,)
    # Order is kept as given (feature order follows it).
    assert resolve_noise_levels("abar:0.5,0.9", abar) == tuple(
        int((abar - v).abs().argmin()) for v in (0.5, 0.9)
    )


@pytest.mark.parametrize(
    "text, match",
    [
        ("abar:1.2", "strictly between 0 and 1"),
        ("abar:0", "strictly between 0 and 1"),
        ("snr:1,2", "unknown form"),
        ("0.9,0.5", "unknown form"),
        ("logsnr:a,b", "not a list of numbers"),
        ("logsnr:", "at least one"),
    ],
)
def test_bad_noise_levels_name_the_text_and_the_forms(text, match):
    with pytest.raises(PairforgeError, match=match) as info:
        parse_noise_levels(text)
    assert repr(text) in str(info.value) and "baranchuk" in str(info.value)


def test_noise_levels_that_share_a_timestep_are_an_error():
    coarse = _abar("linear", num_train_timesteps=10)
    with pytest.raises(PairforgeError, match=r"share a timestep"):
        resolve_noise_levels("abar:0.97,0.969", coarse)


def test_extractor_resolves_noise_levels_and_noises_at_that_timestep():
    model = _tiny_unet()
    scheduler_config = make_scheduler_config("cosine")
    config = FeatureConfig(timesteps=(1, 2, 3), noise_levels="baranchuk")
    extractor = DiffusionFeatureExtractor(model, scheduler_config, config=config)
    assert extractor.config.timesteps == (103, 300, 481)
    abar = _abar("cosine")
    assert extractor.config.abar == pytest.approx([float(abar[t]) for t in (103, 300, 481)])
    assert extractor.config.abar == pytest.approx(baranchuk_abar(), abs=3e-3)
    assert extractor.config.logsnr == pytest.approx(
        [float((abar[t] / (1 - abar[t])).log()) for t in (103, 300, 481)]
    )
    assert extractor.feature_names[0].startswith("t103/")
    inputs = _capture_model_input(model)
    images = torch.rand(1, 2, 16, 16) * 2 - 1
    extractor.extract(images)
    eps = extractor.noise(16, 16).double()
    expected = abar[300].sqrt() * images.double() + (1 - abar[300]).sqrt() * eps
    torch.testing.assert_close(inputs[1].double(), expected, atol=1e-5, rtol=1e-5)
    # Plain timesteps are recorded with their abar too.
    plain = DiffusionFeatureExtractor(model, scheduler_config)
    assert plain.config.timesteps == (50, 150, 250)
    assert plain.config.abar == pytest.approx([float(abar[t]) for t in (50, 150, 250)])


def test_feature_config_dict_roundtrip_and_old_heads():
    config = FeatureConfig(
        timesteps=(103, 300), noise_levels="abar:0.97,0.786", abar=(0.97, 0.786),
        mask_fill="mean", mask_mean=(-0.2, 0.2), class_fractions=(0.4, 0.6),
    )  # fmt: skip
    data = json.loads(json.dumps(config.to_dict()))
    assert data["logsnr"] == pytest.approx([np.log(0.97 / 0.03), np.log(0.786 / 0.214)])
    assert FeatureConfig.from_dict(data) == config
    # A head.json "features" entry written before noise levels existed.
    old = {"timesteps": [50, 150], "blocks": None, "noise_seed": 0, "mask_fill": "zeros"}
    loaded = FeatureConfig.from_dict(old)
    assert loaded == FeatureConfig(timesteps=(50, 150), mask_fill="zeros")
    # One written before mask_fill existed was fitted with zeros, whatever today's default.
    del old["mask_fill"]
    assert FeatureConfig.from_dict(old).mask_fill == "zeros" != FeatureConfig().mask_fill
    assert loaded.abar is None and loaded.logsnr is None and loaded.noise_levels is None


# ---------------------------------------------------------------------------------------------
# mask_fill "mean": the mean code of the training masks.


def test_mean_mask_code_closed_forms():
    fractions = class_fractions(torch.tensor([[0, 0, 1, 2], [0, 255, 255, 1]]), 3)
    assert fractions == pytest.approx((3 / 6, 2 / 6, 1 / 6))
    onehot = MaskCodec(3, "onehot")
    assert mean_mask_code(onehot, fractions) == pytest.approx([2 * p - 1 for p in fractions])
    # Bits: class 0 = (-1, -1), 1 = (+1, -1), 2 = (-1, +1) (least significant bit first).
    bits = MaskCodec(3, "bits")
    p0, p1, p2 = fractions
    assert mean_mask_code(bits, fractions) == pytest.approx([-p0 + p1 - p2, -p0 - p1 + p2])
    with pytest.raises(PairforgeError, match="2 class fractions"):
        mean_mask_code(onehot, (0.5, 0.5))


def test_joint_mean_fill_noises_the_mean_code():
    model = _tiny_unet(in_channels=5)  # 2 image channels + 3 one-hot mask channels
    mean = (-0.5, 0.25, -0.75)
    extractor = DiffusionFeatureExtractor(
        model, make_scheduler_config(), image_channels=2,
        config=FeatureConfig(timesteps=(150,), mask_fill="mean", mask_mean=mean),
    )  # fmt: skip
    inputs = _capture_model_input(model)
    extractor.extract(torch.randn(2, 2, 16, 16))
    abar = _abar("linear")[150]
    eps = extractor.noise(16, 16)[2:].double()
    expected = (
        abar.sqrt() * torch.tensor(mean, dtype=torch.float64).view(3, 1, 1)
        + (1 - abar).sqrt() * eps
    )
    torch.testing.assert_close(inputs[0][:, 2:].double(), expected.expand(2, -1, -1, -1),
                               atol=1e-5, rtol=1e-5)  # fmt: skip
    with pytest.raises(PairforgeError, match="needs mask_mean with one value per mask channel"):
        DiffusionFeatureExtractor(
            model, make_scheduler_config(), image_channels=2,
            config=FeatureConfig(mask_fill="mean", mask_mean=(0.0, 0.0)),
        )  # fmt: skip
