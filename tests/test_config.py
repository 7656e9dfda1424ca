"""TrainConfig: presets, YAML files, --set overrides and errors that name the key and value."""

import pytest

from pairforge.config import TrainConfig, apply_override, load_config, preset_names
from pairforge.errors import PairforgeError


def test_every_shipped_preset_validates():
    names = preset_names()
    assert {"tiny", "demo-image", "demo-joint", "demo-mask", "grains-64"} <= set(names)
    for name in names:
        config = load_config(name)
        assert isinstance(config, TrainConfig)
    assert load_config("demo-joint").task == "joint"
    assert load_config("grains-64").model.preset == "base"


def test_load_from_path_and_overrides(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("task: mask\noptim: {lr: 0.001}\n")
    config = load_config(
        path,
        [
            "optim.lr=1e-4",
            "model.block_out_channels=[16, 32]",
            "diffusion.min_snr_gamma=null",
            "precision=bf16",
            "sdm.cond_drop_prob=0.1",
        ],
    )
    assert config.task == "mask"
    assert config.optim.lr == pytest.approx(1e-4)
    assert config.model.block_out_channels == [16, 32]
    assert config.diffusion.min_snr_gamma is None
    assert config.precision == "bf16"
    assert config.sdm.cond_drop_prob == 0.1
    assert config.model.overrides() == {"block_out_channels": [16, 32]}
    # Defaults fill unspecified sections.
    assert config.ema.decay == 0.9999 and config.sr.scale_factor == 4


def test_round_trip_through_yaml(tmp_path):
    config = load_config("demo-joint", ["seed=3"])
    path = tmp_path / "resolved.yaml"
    path.write_text(config.to_yaml())
    assert load_config(path) == config


def test_unknown_key_in_file_names_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("task: image\noptim: {lrate: 0.1}\n")
    with pytest.raises(PairforgeError, match=r"unknown key 'optim.lrate'") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_bad_values_name_key_and_value(tmp_path):
    with pytest.raises(PairforgeError, match=r"optim.lr: .*got 'fast'"):
        load_config("tiny", ["optim.lr=fast"])
    with pytest.raises(PairforgeError, match=r"task: .*got 'video'"):
        load_config("tiny", ["task=video"])
    with pytest.raises(PairforgeError, match=r"optim.batch_size: .*got 0"):
        load_config("tiny", ["optim.batch_size=0"])
    with pytest.raises(PairforgeError, match="crop_size 16 is smaller than data.resolution 32"):
        load_config("tiny", ["data.crop_size=16", "data.resolution=32"])


def test_set_errors():
    with pytest.raises(PairforgeError, match=r"unknown key 'optim.lrr'.*lr, warmup_steps"):
        apply_override({}, "optim.lrr=3")
    with pytest.raises(PairforgeError, match="expected key=value"):
        apply_override({}, "optim.lr")
    with pytest.raises(PairforgeError, match="'optim' is a section"):
        apply_override({}, "optim=3")
    with pytest.raises(PairforgeError, match="'seed' is a value"):
        apply_override({}, "seed.x=3")
    with pytest.raises(PairforgeError, match="unknown key 'nope'"):
        apply_override({}, "nope=1")


def test_unknown_preset_lists_the_presets():
    with pytest.raises(PairforgeError, match="no preset of that name.*demo-image"):
        load_config("no-such-preset")
