"""Tests of the procedural grinding-tool generator: determinism, statistics, validation, writer."""

import numpy as np
import pytest

from pairforge.data.dataset import load_dataset
from pairforge.data.grains import (
    PRESETS,
    GrainParams,
    generate_measurement,
    generate_measurement_with_info,
    measure_statistics,
    parse_grain_params,
    write_grains_dataset,
)
from pairforge.errors import PairforgeError

FRACTION_TOLERANCE = 0.03


def test_same_seed_same_arrays_other_seed_other_arrays():
    image_a, mask_a = generate_measurement(96, 160, None, seed=3)
    image_b, mask_b = generate_measurement(96, 160, None, seed=3)
    image_c, mask_c = generate_measurement(96, 160, None, seed=4)
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(mask_a, mask_b)
    assert not np.array_equal(image_a, image_c)
    assert not np.array_equal(mask_a, mask_c)


def test_shapes_dtypes_and_classes():
    image, mask = generate_measurement(64, 200, {"pore_fraction": 0.08}, seed=(1, 2))
    assert image.shape == (2, 64, 200) and image.dtype == np.float32
    assert mask.shape == (64, 200) and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1, 2}
    assert np.isfinite(image).all()
    # Grains protrude, pores are depressions: mean depth orders pore < binder < grain.
    depth = image[1]
    assert depth[mask == 2].mean() < depth[mask == 0].mean() < depth[mask == 1].mean()
    # Grains are brighter than binder, pores darker.
    intensity = image[0]
    assert intensity[mask == 2].mean() < intensity[mask == 0].mean() < intensity[mask == 1].mean()


@pytest.mark.parametrize(
    "grain_fraction, pore_fraction, median_px",
    [(0.2, 0.02, 16.0), (0.35, 0.05, 28.0), (0.45, 0.1, 20.0)],
)
def test_measured_statistics_follow_the_request(grain_fraction, pore_fraction, median_px):
    params = GrainParams(
        grain_area_fraction=grain_fraction,
        pore_fraction=pore_fraction,
        grain_median_diameter_px=median_px,
    )
    image, mask = generate_measurement(384, 768, params, seed=0)
    stats = measure_statistics(image, mask)
    assert abs(stats["grain_area_fraction"] - grain_fraction) <= FRACTION_TOLERANCE
    assert abs(stats["pore_fraction"] - pore_fraction) <= FRACTION_TOLERANCE
    # Median equivalent diameter within 20% of the request (edge grains excluded).
    assert abs(stats["grain_median_diameter_px"] / median_px - 1) < 0.2
    assert stats["grain_count"] > 50


def test_worn_fraction_is_measurable():
    for wear in (0.0, 0.6):
        image, mask, info = generate_measurement_with_info(
            256, 768, {"wear_fraction": wear}, seed=5
        )
        stats = measure_statistics(image, mask)
        assert abs(stats["worn_fraction"] - wear) <= 0.1, (wear, stats)
        assert info["grains_placed"] == stats["grain_count"]  # grains never merge


def test_no_grains_no_pores_is_plain_binder():
    image, mask = generate_measurement(
        48, 48, {"grain_area_fraction": 0.0, "pore_fraction": 0.0}, seed=0
    )
    assert (mask == 0).all()
    assert abs(float(image[1].mean())) < 1.0  # zero-mean binder (plus noise)


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"grain_area_fraction": 0.9}, "grain_area_fraction=0.9"),
        ({"grain_size_sigma": -1}, "grain_size_sigma=-1"),
        ({"wear_level_range": (0.8, 0.2)}, "wear_level_range"),
        ({"grain_area_fraction": 0.5, "pore_fraction": 0.3}, "<= 0.7"),
        ({"grain_colour": 1}, "grain_colour"),
    ],
)
def test_bad_params_name_the_key(overrides, fragment):
    with pytest.raises(PairforgeError, match="grain generator parameter") as info:
        parse_grain_params(overrides)
    assert fragment in str(info.value)


def test_bad_size_and_seed_raise():
    with pytest.raises(PairforgeError, match="height=4"):
        generate_measurement(4, 64)
    with pytest.raises(PairforgeError, match="seed"):
        generate_measurement(16, 16, seed=-1)


def test_writer_produces_a_loadable_dataset(tmp_path, monkeypatch):
    from pairforge.data import grains

    tiny = grains.GrainPreset(48, 96, (("train", 2), ("val", 1), ("test", 1)))
    monkeypatch.setitem(grains.PRESETS, "tiny-test", tiny)
    path = write_grains_dataset(tmp_path / "ds", preset="tiny-test", seed=7, progress=False)
    ds = load_dataset(path)
    assert ds.ids("train") == ["m000", "m001"] and ds.ids("val") == ["m002"]
    assert ds.ids("test") == ["m003"]
    assert [c.name for c in ds.spec.channels] == ["intensity", "depth"]
    assert [(c.id, c.name) for c in ds.spec.classes] == [(0, "binder"), (1, "grain"), (2, "pore")]
    # Each measurement can be regenerated alone from (seed, index).
    image, mask = generate_measurement(48, 96, None, seed=(7, 2))
    np.testing.assert_array_equal(ds.read_image("m002"), image)
    np.testing.assert_array_equal(ds.read_mask("m002"), mask.astype(np.int64))


def test_unknown_preset_raises(tmp_path):
    assert {"demo", "full"} <= set(PRESETS)
    assert PRESETS["full"].num_measurements == 10
    with pytest.raises(PairforgeError, match="unknown grain preset 'huge'"):
        write_grains_dataset(tmp_path, preset="huge")
