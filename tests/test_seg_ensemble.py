"""Tests for the pixel-MLP ensemble: learning, early stopping by image, uncertainty, I/O."""

import json
import math

import numpy as np
import pytest
import torch

from pairforge.core.metrics import mean_iou
from pairforge.errors import PairforgeError
from pairforge.seg.ensemble import EnsembleConfig, PixelEnsemble, image_scores
from pairforge.seg.ensemble_training import EnsembleSettings, split_by_image, train_ensemble
from pairforge.seg.pixels import PixelFeatures


def _toy_pixels(num_images=6, pixels_per_image=200, dim=16, num_classes=3, seed=0, spread=0.3):
    """Linearly separable clusters: class k sits around 2 * e_k in feature space."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=num_images * pixels_per_image)
    centers = np.zeros((num_classes, dim))
    centers[np.arange(num_classes), np.arange(num_classes)] = 2.0
    features = centers[labels] + spread * rng.standard_normal((labels.size, dim))
    image_index = np.repeat(np.arange(num_images), pixels_per_image).astype(np.int32)
    return PixelFeatures(features.astype(np.float16), labels.astype(np.int64), image_index)


def test_learns_separable_toy_problem_to_near_perfect_miou():
    train = _toy_pixels(seed=0)
    test = _toy_pixels(num_images=2, seed=1)
    ensemble, history = train_ensemble(
        train,
        num_classes=3,
        settings=EnsembleSettings(num_models=3, max_epochs=10, batch_size=128),
        progress=False,
    )
    prediction = ensemble.predict(torch.from_numpy(test.features))
    assert mean_iou(prediction.labels, test.labels, 3) > 0.98
    assert len(history["members"]) == 3
    assert all(record["best_val_miou"] > 0.95 for record in history["members"])
    assert len(history["val_images"]) == 1  # 20% of 6 images, whole images


def test_split_is_by_image_never_by_pixel():
    image_index = np.repeat(np.arange(10), 7)
    train_rows, val_rows = split_by_image(image_index, 0.3, seed=4)
    train_images = set(image_index[train_rows].tolist())
    val_images = set(image_index[val_rows].tolist())
    assert not train_images & val_images
    assert len(val_images) == 3 and len(train_images) == 7
    assert len(train_rows) + len(val_rows) == 70
    # One image: nothing held out.
    train_rows, val_rows = split_by_image(np.zeros(5, dtype=int), 0.2, seed=0)
    assert len(val_rows) == 0 and len(train_rows) == 5


def test_early_stopping_keeps_best_epoch_and_respects_patience():
    train = _toy_pixels(seed=2)
    _, history = train_ensemble(
        train,
        num_classes=3,
        settings=EnsembleSettings(num_models=2, max_epochs=30, patience=2, batch_size=256),
        progress=False,
    )
    for record in history["members"]:
        # Perfect validation is reached quickly, then 2 epochs without gain stop training.
        assert record["epochs_run"] < 30
        assert record["epochs_run"] - record["best_epoch"] <= 2


def test_same_seed_same_ensemble():
    train = _toy_pixels(seed=3)
    kwargs = dict(num_classes=3, progress=False)
    settings = EnsembleSettings(num_models=2, max_epochs=2, seed=7)
    first, _ = train_ensemble(train, settings=settings, **kwargs)
    second, _ = train_ensemble(train, settings=settings, **kwargs)
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    # Members differ from each other (their own seeds).
    weights = [m[0].weight for m in first.members]
    assert not torch.equal(weights[0], weights[1])


def test_validation_in_chunks_gives_the_same_early_stopping(monkeypatch):
    """Validation pixels are scored in float32 chunks (bounded memory): the chunk size changes
    neither the scores, the best epochs nor the kept weights."""
    from pairforge.seg import ensemble_training

    train, val = _toy_pixels(seed=4), _toy_pixels(num_images=2, seed=5, spread=0.8)
    settings = EnsembleSettings(num_models=2, max_epochs=6, patience=3, seed=1)
    results = []
    for chunk in (ensemble_training.VAL_CHUNK_ROWS, 37):
        monkeypatch.setattr(ensemble_training, "VAL_CHUNK_ROWS", chunk)
        results.append(train_ensemble(train, 3, settings, val_pixels=val, progress=False))
    (whole, whole_history), (chunked, chunked_history) = results
    for a, b in zip(whole_history["members"], chunked_history["members"], strict=True):
        assert (a["best_epoch"], a["best_val_miou"]) == (b["best_epoch"], b["best_val_miou"])
    for key, value in whole.state_dict().items():
        assert torch.equal(value, chunked.state_dict()[key]), key


def test_default_widths_follow_the_paper():
    assert EnsembleConfig(64, 3).hidden_widths == (128, 32)
    assert EnsembleConfig(64, 34).hidden_widths == (256, 128)
    member = PixelEnsemble(EnsembleConfig(64, 34, num_models=1)).members[0]
    kinds = [type(layer).__name__ for layer in member]
    assert kinds == ["Linear", "ReLU", "BatchNorm1d", "Linear", "ReLU", "BatchNorm1d", "Linear"]
    assert member[0].out_features == 256 and member[3].out_features == 128


def _fixed_ensemble(member_logits):
    """An ensemble whose member m outputs constant logits member_logits[m] (bias only)."""
    num_models, num_classes = len(member_logits), len(member_logits[0])
    ensemble = PixelEnsemble(EnsembleConfig(4, num_classes, num_models=num_models, hidden=(2,)))
    for member, logits in zip(ensemble.members, member_logits, strict=True):
        torch.nn.init.zeros_(member[-1].weight)
        member[-1].bias.data = torch.tensor(logits, dtype=torch.float32)
    return ensemble.eval()


def test_mean_softmax_vote_entropy_and_disagreement_by_hand():
    big = 20.0  # near one-hot softmax
    ensemble = _fixed_ensemble([[big, 0, 0], [big, 0, 0], [0, big, 0], [0, 0, 0]])
    features = torch.randn(5, 4)
    mean_result = ensemble.predict(features, keep_probs=True)
    vote_result = ensemble.predict(features, combine="vote")
    # Mean softmax: class 0 gets (1 + 1 + 0 + 1/3) / 4.
    assert mean_result.mean_probs[0, 0].item() == pytest.approx((2 + 1 / 3) / 4, abs=1e-6)
    assert mean_result.labels.tolist() == [0] * 5
    assert vote_result.labels.tolist() == [0] * 5
    probs = np.array([(2 + 1 / 3) / 4, (1 + 1 / 3) / 4, (1 / 3) / 4])
    assert mean_result.entropy[0].item() == pytest.approx(-(probs * np.log(probs)).sum(), abs=1e-5)
    # Votes: 0, 0, 1, 0 (uniform member argmax is class 0) -> one of four disagrees.
    assert mean_result.disagreement[0].item() == pytest.approx(0.25)
    assert 0 <= mean_result.entropy.max().item() <= math.log(3) + 1e-6


def test_vote_differs_from_mean_when_majority_is_unsure():
    # Two members mildly prefer class 1, one member is certain of class 0.
    ensemble = _fixed_ensemble([[0.0, 0.5], [0.0, 0.5], [30.0, 0.0]])
    features = torch.randn(3, 4)
    assert ensemble.predict(features, combine="vote").labels.tolist() == [1, 1, 1]
    assert ensemble.predict(features, combine="mean").labels.tolist() == [0, 0, 0]


def test_segment_reshapes_and_image_scores_use_top_ten_percent():
    ensemble = _fixed_ensemble([[1.0, 0.0], [0.0, 1.0]])
    result = ensemble.segment(torch.randn(2, 4, 5, 6))
    assert result.labels.shape == result.entropy.shape == (2, 5, 6)
    uncertainty = torch.zeros(2, 10, 10)
    uncertainty[0, 0, :10] = 1.0  # exactly the top 10% of image 0
    uncertainty[1, 0, :5] = 1.0  # half of image 1's top 10%
    torch.testing.assert_close(image_scores(uncertainty), torch.tensor([1.0, 0.5]))


def test_save_load_roundtrip_without_pickle(tmp_path):
    train = _toy_pixels(seed=5)
    ensemble, _ = train_ensemble(
        train, num_classes=3, settings=EnsembleSettings(num_models=2, max_epochs=1), progress=False
    )
    ensemble.save(tmp_path / "head", extra={"features": {"timesteps": [50]}})
    loaded, meta = PixelEnsemble.load(tmp_path / "head")
    features = torch.from_numpy(train.features[:50])
    before, after = ensemble.predict(features), loaded.predict(features)
    assert torch.equal(before.labels, after.labels)
    torch.testing.assert_close(before.entropy, after.entropy)
    assert meta["features"] == {"timesteps": [50]}
    assert json.loads((tmp_path / "head" / "head.json").read_text())["ensemble"]["num_models"] == 2
    assert not list((tmp_path / "head").glob("*.pt")) and not list(
        (tmp_path / "head").glob("*.pkl")
    )
    with pytest.raises(PairforgeError, match="not a segmentation head"):
        PixelEnsemble.load(tmp_path)


def test_class_balance_and_bad_labels():
    train = _toy_pixels(seed=6)
    keep = (train.labels != 2) | (np.arange(train.labels.size) % 10 == 0)  # rare class 2
    rare = PixelFeatures(train.features[keep], train.labels[keep], train.image_index[keep])
    ensemble, _ = train_ensemble(
        rare,
        num_classes=3,
        settings=EnsembleSettings(num_models=1, max_epochs=5, batch_size=64, class_balance=True),
        progress=False,
    )
    test = _toy_pixels(num_images=1, seed=7)
    assert mean_iou(ensemble.predict(torch.from_numpy(test.features)).labels, test.labels, 3) > 0.9
    bad = PixelFeatures(train.features, train.labels + 5, train.image_index)
    with pytest.raises(PairforgeError, match="num_classes=3"):
        train_ensemble(bad, num_classes=3, progress=False)
    with pytest.raises(PairforgeError, match=r"\(P, 16\)"):
        ensemble.predict(torch.zeros(3, 8))


def test_js_is_zero_for_identical_members():
    ensemble = _fixed_ensemble([[0.3, -1.0, 2.0]] * 4)
    result = ensemble.predict(torch.randn(6, 4))
    probs = torch.tensor([0.3, -1.0, 2.0]).softmax(0)
    entropy = float(-(probs * probs.log()).sum())
    # Members are unsure (entropy > 0.5 nats) but agree: JS = 0, entropy does not see it.
    assert entropy > 0.5
    torch.testing.assert_close(result.entropy, torch.full((6,), entropy))
    torch.testing.assert_close(result.js, torch.zeros(6), atol=1e-6, rtol=0)
    torch.testing.assert_close(result.uncertainty("js"), result.js)
    torch.testing.assert_close(result.uncertainty(), result.js)  # the default kind


def test_js_of_two_confident_disagreeing_members_is_log_two():
    big = 40.0  # softmax one-hot to float32 precision
    ensemble = _fixed_ensemble([[big, 0.0], [0.0, big]])
    result = ensemble.predict(torch.randn(3, 4))
    torch.testing.assert_close(result.js, torch.full((3,), math.log(2)), atol=1e-5, rtol=0)
    torch.testing.assert_close(result.member_entropy, torch.zeros(3), atol=1e-5, rtol=0)


def test_js_is_bounded_by_log_members_and_reaches_it():
    # M = 3 confident members on 3 different classes of 5: JS = log 3 (the bound log M).
    big = 40.0
    logits = [[big, 0, 0, 0, 0], [0, big, 0, 0, 0], [0, 0, big, 0, 0]]
    result = _fixed_ensemble(logits).predict(torch.randn(2, 4))
    torch.testing.assert_close(result.js, torch.full((2,), math.log(3)), atol=1e-5, rtol=0)
    # Random members: 0 <= JS <= log M always, and JS <= entropy of the mean.
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        random_logits = (torch.randn(3, 5, generator=generator) * 4).tolist()
        result = _fixed_ensemble(random_logits).predict(torch.randn(1, 4))
        js = float(result.js[0])
        assert 0.0 <= js <= math.log(3) + 1e-6
        assert js <= float(result.entropy[0]) + 1e-6
        # Closed form from the member softmaxes.
        probs = torch.tensor(random_logits).softmax(-1).double()
        h = lambda p: float(-(p * p.clamp_min(1e-300).log()).sum(-1).mean())  # noqa: E731
        assert js == pytest.approx(h(probs.mean(0)) - h(probs), abs=1e-5)


def test_majority_vote_matches_the_reference_mode_of_member_labels():
    # The reference combines by torch.mode over the members' argmax labels; with a strict
    # majority ours is the same, ties go to the higher mean softmax.
    generator = torch.Generator().manual_seed(1)
    ensemble = PixelEnsemble(EnsembleConfig(6, 4, num_models=5, hidden=(8,))).eval()
    features = torch.randn(400, 6, generator=generator) * 3
    result = ensemble.predict(features, combine="vote", keep_probs=True)
    with torch.no_grad():
        member_labels = torch.stack([m(features).argmax(-1) for m in ensemble.members])
    counts = torch.nn.functional.one_hot(member_labels, 4).sum(0)
    top = counts.max(dim=1).values
    strict = (counts == top[:, None]).sum(dim=1) == 1
    assert strict.sum() > 100 and (~strict).sum() > 0  # both cases occur
    mode = torch.mode(member_labels, dim=0).values
    assert torch.equal(result.labels[strict], mode[strict])
    tied = ~strict
    tie_choice = torch.where(counts == top[:, None], result.mean_probs, -1.0).argmax(dim=1)
    assert torch.equal(result.labels[tied], tie_choice[tied])
    with pytest.raises(PairforgeError, match="'mean' \\(mean softmax, default\\) or 'vote'"):
        ensemble.predict(features, combine="median")


def test_unknown_uncertainty_kind_names_the_choices():
    result = _fixed_ensemble([[1.0, 0.0]]).predict(torch.randn(2, 4))
    with pytest.raises(PairforgeError, match="js, entropy, disagreement"):
        result.uncertainty("variance")
