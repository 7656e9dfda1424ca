"""Round-trip and error tests for MaskCodec."""

import pytest
import torch

from pairforge.data.codec import MaskCodec
from pairforge.errors import PairforgeError


@pytest.mark.parametrize("num_classes", range(2, 36))
# "auto" resolves to one of these two kinds (test_channel_counts_and_auto), so it adds no case.
@pytest.mark.parametrize("kind", ["onehot", "bits"])
def test_round_trip_every_class(num_classes, kind):
    codec = MaskCodec(num_classes, kind)
    generator = torch.Generator().manual_seed(num_classes)
    mask = torch.randint(0, num_classes, (2, 7, 9), generator=generator)
    mask.view(-1)[:num_classes] = torch.arange(num_classes)  # every class present
    encoded = codec.encode(mask)
    assert encoded.shape == (2, codec.channels, 7, 9)
    assert encoded.dtype == torch.float32
    assert set(encoded.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(codec.decode(encoded), mask)
    # Small noise does not change the decoded class.
    noisy = encoded + 0.15 * torch.randn(encoded.shape, generator=generator)
    assert torch.equal(codec.decode(noisy), mask)


def test_channel_counts_and_auto():
    assert MaskCodec(2).kind == "onehot" and MaskCodec(2).channels == 2
    assert MaskCodec(8).kind == "onehot" and MaskCodec(8).channels == 8
    assert MaskCodec(9).kind == "bits" and MaskCodec(9).channels == 4
    assert MaskCodec(35).channels == 6
    assert MaskCodec(8, "auto") == MaskCodec(8, "onehot")
    assert MaskCodec(9, "auto") == MaskCodec(9, "bits")
    assert MaskCodec(2, "bits").channels == 1
    assert MaskCodec(16, "bits").channels == 4
    assert MaskCodec(17, "bits").channels == 5


def test_bits_decode_clamps_to_valid_ids():
    codec = MaskCodec(5, "bits")  # 3 bits can spell 0..7; 5..7 must clamp to 4
    all_positive = torch.ones(1, 3, 2, 2)
    assert codec.decode(all_positive).max().item() == 4
    assert codec.decode(-all_positive).max().item() == 0


def test_onehot_decode_is_argmax():
    codec = MaskCodec(3, "onehot")
    x = torch.tensor([[0.1, 0.9, -0.5], [-1.0, -0.9, -0.95]]).T.reshape(1, 3, 1, 2)
    assert codec.decode(x).tolist() == [[[1, 1]]]


@pytest.mark.parametrize("num_classes,kind", [(3, "onehot"), (20, "bits"), (6, "auto")])
def test_dict_round_trip(num_classes, kind):
    codec = MaskCodec(num_classes, kind)
    restored = MaskCodec.from_dict(codec.to_dict())
    assert restored == codec
    assert restored.channels == codec.channels


def test_errors_name_the_bad_value():
    with pytest.raises(PairforgeError, match="num_classes=1"):
        MaskCodec(1)
    with pytest.raises(PairforgeError, match="'gray'"):
        MaskCodec(3, "gray")
    with pytest.raises(PairforgeError, match="255"):
        MaskCodec(3).encode(torch.tensor([[[0, 255]]]))
    with pytest.raises(PairforgeError, match="3 mask channels"):
        MaskCodec(3).decode(torch.zeros(1, 2, 4, 4))
    with pytest.raises(PairforgeError, match="channels=5"):
        MaskCodec.from_dict({"num_classes": 3, "kind": "onehot", "channels": 5})
