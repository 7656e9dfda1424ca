"""SemanticUNet: shapes, mask conditioning through SPADE only, save/load round trip."""

import pytest
import torch

from pairforge.errors import PairforgeError
from pairforge.models.sdm import SemanticUNet


def tiny_sdm(in_channels=2, out_channels=2, num_classes=3, **overrides):
    kwargs = dict(
        sample_size=16,
        in_channels=in_channels,
        out_channels=out_channels,
        num_classes=num_classes,
        block_out_channels=(16, 32),
        layers_per_block=1,
        attention_levels=(False, True),
        norm_num_groups=8,
        spade_hidden_channels=16,
    )
    kwargs.update(overrides)
    torch.manual_seed(0)
    return SemanticUNet(**kwargs).eval()


def one_hot(mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(mask, num_classes).permute(0, 3, 1, 2).float()


def random_segmap(batch, num_classes, size=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return one_hot(torch.randint(0, num_classes, (batch, size, size), generator=g), num_classes)


@pytest.mark.parametrize(
    "in_channels,out_channels,num_classes", [(1, 1, 2), (2, 2, 3), (4, 8, 5), (3, 3, 35)]
)
def test_output_shape_for_channel_counts(in_channels, out_channels, num_classes):
    model = tiny_sdm(in_channels, out_channels, num_classes)
    sample = torch.randn(2, in_channels, 16, 16)
    with torch.no_grad():
        out = model(sample, torch.tensor([3, 700]), random_segmap(2, num_classes)).sample
    assert out.shape == (2, out_channels, 16, 16)
    assert torch.isfinite(out).all()


def test_three_levels_and_scalar_timestep():
    model = tiny_sdm(block_out_channels=(8, 16, 16), attention_levels=(False, False, True))
    with torch.no_grad():
        out = model(torch.randn(3, 2, 16, 16), 250, random_segmap(3, 3)).sample
    assert out.shape == (3, 2, 16, 16)


def test_mask_changes_output_but_not_encoder_features():
    """The mask reaches the output, and only through the SPADE middle/decoder (encoder is mask-free)."""
    model = tiny_sdm()
    encoder_features = []
    hooks = [
        block.register_forward_hook(lambda _m, _i, out: encoder_features.append(out.clone()))
        for resnets in model.down_resnets
        for block in resnets
    ]
    sample = torch.randn(2, 2, 16, 16)
    t = torch.tensor([100, 100])
    with torch.no_grad():
        out_a = model(sample, t, random_segmap(2, 3, seed=1)).sample
        out_b = model(sample, t, random_segmap(2, 3, seed=2)).sample
        out_uncond = model(sample, t, torch.zeros(2, 3, 16, 16)).sample
    for hook in hooks:
        hook.remove()
    half = len(encoder_features) // 3
    runs = [encoder_features[i * half : (i + 1) * half] for i in range(3)]
    for features_a, features_b in zip(runs[0], runs[1], strict=True):
        torch.testing.assert_close(features_a, features_b, rtol=0, atol=0)
    assert (out_a - out_b).abs().mean() > 1e-3
    assert (out_a - out_uncond).abs().mean() > 1e-3


def test_mask_effect_is_local_where_mask_changed():
    """Changing the mask in one corner changes the output most there (per-pixel SPADE modulation)."""
    model = tiny_sdm(block_out_channels=(16,), attention_levels=(False,))
    sample = torch.randn(1, 2, 16, 16)
    mask = torch.zeros(1, 16, 16, dtype=torch.long)
    changed = mask.clone()
    changed[:, :4, :4] = 2
    with torch.no_grad():
        diff = (
            model(sample, 10, one_hot(mask, 3)).sample
            - model(sample, 10, one_hot(changed, 3)).sample
        ).abs()
    assert diff[..., :6, :6].mean() > 10 * diff[..., 10:, 10:].mean()


def test_save_load_identical_output(tmp_path):
    model = tiny_sdm(num_classes=4)
    # Non-default weights everywhere so a silently skipped tensor would show.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "sdm")
    assert (tmp_path / "sdm" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = SemanticUNet.from_pretrained(tmp_path / "sdm").eval()
    sample, segmap = torch.randn(2, 2, 16, 16), random_segmap(2, 4)
    with torch.no_grad():
        torch.testing.assert_close(
            model(sample, 42, segmap).sample, loaded(sample, 42, segmap).sample, rtol=0, atol=0
        )
    assert loaded.config.num_classes == 4
    assert tuple(loaded.config.block_out_channels) == (16, 32)


def test_bad_config_and_bad_segmap_raise():
    with pytest.raises(PairforgeError, match="attention_levels"):
        tiny_sdm(attention_levels=(True,))
    with pytest.raises(PairforgeError, match="norm_num_groups"):
        tiny_sdm(block_out_channels=(12, 32))
    model = tiny_sdm(num_classes=3)
    with pytest.raises(PairforgeError, match="segmap shape"):
        model(torch.randn(1, 2, 16, 16), 1, torch.zeros(1, 4, 16, 16))


def test_default_spade_width_follows_the_first_block_width():
    narrow = tiny_sdm(spade_hidden_channels=None)  # first width 16 -> 32 hidden channels
    assert narrow.mid_block1.norm1.to_gamma.in_channels == 32
    wide = SemanticUNet(8, 1, 1, 2, block_out_channels=(96,), attention_levels=(False,))
    assert wide.mid_block1.norm1.to_gamma.in_channels == 128
