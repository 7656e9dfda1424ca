"""Class-fraction conditioning: fractions of masks, the conditioned U-Net and its null condition,
guidance, config checks, save -> load, `generate --fractions` parsing and a tiny steered run."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from bench_modules import load_bench
from PIL import Image
from test_train_helpers import tiny_config, write_tiny_dataset
from typer.testing import CliRunner

from pairforge.cli import app
from pairforge.config import load_config
from pairforge.core.task_fractions import guided_fraction_denoiser, training_condition
from pairforge.core.tasks import SamplingCondition, TrainingSettings, get_task
from pairforge.data.codec import IGNORE_INDEX
from pairforge.errors import PairforgeError
from pairforge.generate.fractions import FractionTargets, parse_assignments, resolve_fixed
from pairforge.models.factory import build_model, load_pretrained
from pairforge.models.fractions import (
    FractionConditionedUNet,
    fraction_condition,
    mask_fractions,
)

pytestmark = pytest.mark.usefixtures("single_thread_module")
NAMES = ("binder", "grain", "pore")
FAST = ["--sampler", "ddim", "--steps", "2", "--no-progress", "--device", "cpu"]


def tiny_fraction_unet(seed: int = 0, drop_prob: float = 0.1) -> FractionConditionedUNet:
    torch.manual_seed(seed)
    overrides = {"fraction_conditioning": {"drop_prob": drop_prob}}
    model = build_model("UNet2DModel", "tiny", 3, 3, 16, overrides, fraction_classes=3)
    return model.eval()


def test_fractions_of_hand_made_masks_exclude_unlabeled_pixels():
    mask = torch.tensor(
        [
            [[0, 0, 1, 1], [2, IGNORE_INDEX, IGNORE_INDEX, 1]],  # 2 x 0, 3 x 1, 1 x 2 of 6
            [[IGNORE_INDEX] * 4, [IGNORE_INDEX] * 4],  # nothing labeled
            [[2, 2, 2, 2], [2, 2, 2, 0]],
        ]
    )
    fractions, labeled = mask_fractions(mask, 3)
    assert labeled.tolist() == [True, False, True]
    assert torch.allclose(fractions[0], torch.tensor([2 / 6, 3 / 6, 1 / 6]))
    assert fractions[1].tolist() == [0.0, 0.0, 0.0]
    assert torch.allclose(fractions[2], torch.tensor([1 / 8, 0.0, 7 / 8]))
    # Training: a crop without labeled pixels is always dropped; drop_prob 0 keeps the rest.
    condition = training_condition(mask, 3, torch.Generator().manual_seed(0), 0.0)["fractions"]
    assert condition.shape == (3, 4)
    assert condition[1].tolist() == [0.0] * 4
    assert torch.allclose(condition[0], torch.tensor([2 / 6, 3 / 6, 1 / 6, 1.0]))
    dropped = training_condition(mask, 3, torch.Generator().manual_seed(0), 0.999)["fractions"]
    assert dropped.abs().sum() == 0


def test_condition_changes_the_output_and_null_equals_the_plain_unet():
    model = tiny_fraction_unet()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 500])
    with torch.no_grad():
        plain = copy.deepcopy(model.unet)
        plain.class_embedding = None  # a plain UNet2DModel, as diffusers loads the folder
        plain = plain(x, t)
        null = model(x, t).sample
        null_rows = model(x, t, fractions=torch.zeros(2, 4)).sample
        a = model(x, t, fractions=fraction_condition(torch.tensor([[0.8, 0.1, 0.1]] * 2))).sample
        b = model(x, t, fractions=fraction_condition(torch.tensor([[0.1, 0.1, 0.8]] * 2))).sample
    assert torch.equal(null, null_rows)
    assert torch.equal(null, plain.sample)
    assert (a - b).abs().max() > 1e-4
    assert (a - null).abs().max() > 1e-4
    with pytest.raises(PairforgeError, match=r"fractions shape \(2, 3\).*pass \(B, 4\)"):
        model(x, t, fractions=torch.zeros(2, 3))


def test_guidance_w1_is_conditional_w0_is_null_and_closed_form_between():
    model = tiny_fraction_unet(seed=3)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([100, 700])
    targets = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])
    with torch.no_grad():
        cond = model(x, t, fractions=fraction_condition(targets)).sample
        null = model(x, t).sample
        assert torch.equal(guided_fraction_denoiser(model, targets, 1.0)(x, t), cond)
        assert torch.equal(guided_fraction_denoiser(model, targets, 0.0)(x, t), null)
        guided = guided_fraction_denoiser(model, targets, 2.5)(x, t)
    assert torch.allclose(guided, null + 2.5 * (cond - null), atol=1e-5)
    # The task's denoiser: unconditional without targets, guided with them.
    task = get_task("mask")
    layout = task.make_layout(0, 3, "onehot")
    with torch.no_grad():
        assert torch.equal(task.denoiser(layout, model)(x, t), null)
        fn = task.denoiser(layout, model, SamplingCondition(fractions=targets), guidance_scale=1.0)
        assert torch.equal(fn(x, t), cond)


def test_training_inputs_add_the_condition_only_for_conditioned_models(tmp_path):
    task = get_task("mask")
    layout = task.make_layout(0, 3, "onehot")
    batch = {"mask": torch.randint(0, 3, (4, 16, 16), generator=torch.Generator().manual_seed(0))}
    plain = TrainingSettings()
    assert plain.for_model(torch.nn.Linear(1, 1)) is plain
    x0, extra = task.training_inputs(layout, batch, torch.Generator().manual_seed(5), plain)
    assert extra == {} and x0.shape == (4, 3, 16, 16)
    settings = plain.for_model(tiny_fraction_unet(drop_prob=0.25))
    assert settings.fraction_drop_prob == 0.25
    x0c, extra = task.training_inputs(layout, batch, torch.Generator().manual_seed(5), settings)
    assert torch.equal(x0, x0c) and extra["fractions"].shape == (4, 4)
    fractions, _ = mask_fractions(batch["mask"], 3)
    kept = extra["fractions"][:, -1] == 1
    assert torch.allclose(extra["fractions"][kept, :3], fractions[kept])


def test_config_keys_are_validated(tmp_path):
    config = load_config("tiny", ["task=mask", "model.fraction_conditioning=true"])
    assert config.model.overrides() == {"fraction_conditioning": {"drop_prob": 0.1}}
    assert config.model.fraction_guidance == 2.0
    with pytest.raises(PairforgeError, match="model.fraction_drop_prob"):
        load_config("tiny", ["task=mask", "model.fraction_drop_prob=1.5"])
    with pytest.raises(PairforgeError, match="model.fraction_guidance"):
        load_config("tiny", ["model.fraction_guidance=-1"])
    for task in ("image", "sdm", "sr"):
        with pytest.raises(PairforgeError, match=f"not task='{task}'.*=false"):
            load_config("tiny", [f"task={task}", "model.fraction_conditioning=true"])
    with pytest.raises(PairforgeError, match="applies to UNet2DModel tasks"):
        build_model("SemanticUNet", "tiny", 2, 2, 16, {"fraction_conditioning": {"drop_prob": 0}})


def test_save_load_gives_identical_outputs(tmp_path):
    model = tiny_fraction_unet(seed=7, drop_prob=0.2)
    model.save_pretrained(tmp_path / "m")
    from diffusers import UNet2DModel

    loaded = load_pretrained(UNet2DModel, tmp_path / "m")
    assert isinstance(loaded, FractionConditionedUNet) and loaded.drop_prob == 0.2
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([3, 900])
    condition = fraction_condition(torch.tensor([[0.6, 0.3, 0.1], [0.0, 0.5, 0.5]]))
    with torch.no_grad():
        assert torch.equal(model(x, t, fractions=condition).sample, loaded(x, t, condition).sample)
        assert torch.equal(model(x, t).sample, loaded(x, t).sample)
        # The folder is also a plain UNet2DModel: the null condition.
        plain = UNet2DModel.from_pretrained(tmp_path / "m").eval()
        assert torch.allclose(plain(x, t).sample, model(x, t).sample, atol=1e-6)
    (tmp_path / "m" / "fraction_embedding.safetensors").write_bytes(b"broken")
    with pytest.raises(PairforgeError, match="fraction embedding.*rerunning the training"):
        load_pretrained(UNet2DModel, tmp_path / "m")


def test_fraction_flag_parsing_and_errors():
    assert parse_assignments("grain=0.45, pore=0.10", NAMES, "--fractions") == {1: 0.45, 2: 0.1}
    one_left = resolve_fixed({1: 0.45, 2: 0.1}, NAMES, None, "x")
    assert np.allclose(one_left, [0.45, 0.45, 0.1])
    two_left = resolve_fixed({2: 0.2}, NAMES, np.array([0.6, 0.2, 0.2]), "x")
    assert np.allclose(two_left, [0.6, 0.2, 0.2])  # remainder 0.8 split 3:1
    assert np.allclose(
        resolve_fixed({0: 0.5, 1: 0.25, 2: 0.25}, NAMES, None, "x"), [0.5, 0.25, 0.25]
    )
    bad = {
        "rock=0.1": "class 'rock' is unknown; the run's classes are binder, grain, pore",
        "pore=-0.1": r"pore=-0.1 must be a number >= 0",
        "pore": "is not NAME=VALUE",
        "pore=lots": "'lots' of pore is not a number",
        "": "give at least one NAME=VALUE",
    }
    for text, message in bad.items():
        with pytest.raises(PairforgeError, match=message):
            parse_assignments(text, NAMES, "--fractions")
    with pytest.raises(PairforgeError, match=r"sum to 1.2 > 1"):
        resolve_fixed({1: 0.7, 2: 0.5}, NAMES, None, "grain=0.7,pore=0.5")
    with pytest.raises(PairforgeError, match=r"every class is named but the fractions sum to 0.8"):
        resolve_fixed({0: 0.5, 1: 0.2, 2: 0.1}, NAMES, None, "x")
    pool = np.array([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1]])
    targets = FractionTargets("oversample", NAMES, pool=pool, oversample={2: 3.0})
    drawn = targets.for_seeds([0, 1, 2, 3])
    assert torch.allclose(drawn.sum(1), torch.ones(4))
    assert torch.equal(drawn[2], targets.for_seeds([5, 2])[1])  # per seed, not per batch
    for row in drawn.double():
        source = [p for p in pool if np.allclose(row, p * [1, 1, 3] / (p * [1, 1, 3]).sum())]
        assert len(source) == 1


@pytest.fixture(scope="module")
def steered_run(tmp_path_factory):
    from pairforge.train.loop import train

    root = tmp_path_factory.mktemp("frac")
    data = write_tiny_dataset(root / "data")
    config = tiny_config(data, "task=joint", "model.fraction_conditioning=true")
    return train(config, root / "run")


def invoke(*args):
    return CliRunner().invoke(app, ["generate", *map(str, args)])


def test_tiny_run_samples_with_and_without_fractions(steered_run, tmp_path):
    info = json.loads((steered_run / "model" / "pairforge.json").read_text())
    assert info["fraction_conditioning"]["drop_prob"] == 0.1
    assert info["diffusers_pipeline"] == {"written": True, "pipeline": "DDPMPipeline"}
    assert (steered_run / "model" / "fraction_embedding.safetensors").is_file()
    common = ["--pipeline", "joint", "--run", steered_run, "--n", 3, *FAST]
    plain = invoke(*common, "--out", tmp_path / "plain")
    assert plain.exit_code == 0, plain.output + repr(plain.exception)
    manifest = json.loads((tmp_path / "plain" / "manifest.json").read_text())
    assert "fractions" not in manifest and "target_fractions" not in manifest["samples"][0]

    steered = invoke(*common, "--fractions", "grain=0.45,pore=0.1", "--out", tmp_path / "fixed")
    assert steered.exit_code == 0, steered.output + repr(steered.exception)
    assert "fraction error binder" in steered.output
    manifest = json.loads((tmp_path / "fixed" / "manifest.json").read_text())
    assert manifest["fractions"]["mode"] == "fixed" and manifest["fractions"]["guidance"] == 2.0
    for sample in manifest["samples"]:
        assert sample["target_fractions"] == {"binder": 0.45, "grain": 0.45, "pore": 0.1}
        assert sum(sample["fractions"].values()) == pytest.approx(1, abs=1e-5)
    errors = manifest["fraction_mean_abs_error"]
    assert set(errors) == set(NAMES) and errors["binder"] >= 0
    # The same seeds with w = 0 are the unconditional samples (the null condition).
    zero = invoke(*common, "--fractions", "grain=0.45,pore=0.1", "--guidance-fractions", 0,
                  "--out", tmp_path / "w0")  # fmt: skip
    assert zero.exit_code == 0, zero.output
    for name in ("gen000000", "gen000001"):
        a = np.array(Image.open(tmp_path / "plain" / "masks" / f"{name}.png"))
        b = np.array(Image.open(tmp_path / "w0" / "masks" / f"{name}.png"))
        assert np.array_equal(a, b)

    oversampled = invoke(*common, "--oversample", "pore=3", "--out", tmp_path / "over")
    assert oversampled.exit_code == 0, oversampled.output + repr(oversampled.exception)
    manifest = json.loads((tmp_path / "over" / "manifest.json").read_text())
    assert manifest["fractions"]["mode"] == "oversample"
    assert manifest["fractions"]["oversample"] == {"pore": 3.0}
    assert manifest["fractions"]["train_pool"]["crops"] == 512
    assert all("target_fractions" in s for s in manifest["samples"])


def test_generate_fraction_flag_errors(steered_run, tmp_path):
    common = ["--pipeline", "joint", "--run", steered_run, "--n", 1, *FAST, "--out", tmp_path / "o"]
    cases = {
        ("--fractions", "rock=0.2"): "class 'rock' is unknown",
        ("--fractions", "grain=0.8,pore=0.4"): "sum to 1.2 > 1",
        ("--fractions", "grain=0.2", "--oversample", "pore=2"): "does not combine",
        ("--fractions-from", "val"): "--fractions-from 'val' is unknown; use 'train'",
        ("--oversample", "pore=0"): "factors must be > 0",
    }
    for flags, message in cases.items():
        result = invoke(*common, *flags)
        assert isinstance(result.exception, PairforgeError), (flags, result.output)
        assert message in str(result.exception), (flags, str(result.exception))
    assert not (tmp_path / "o").exists()


def test_fractions_need_a_conditioned_run(tmp_path):
    from test_generate_cli import save_run

    run = save_run(tmp_path / "joint", "joint")
    result = invoke("--pipeline", "joint", "--run", run, "--fractions", "grain=0.2", *FAST,
                    "--out", tmp_path / "o")  # fmt: skip
    assert isinstance(result.exception, PairforgeError)
    assert "is not; train it with --set model.fraction_conditioning=true" in str(result.exception)


def test_drop_prob_zero_writes_no_diffusers_pipeline(tmp_path):
    from pairforge.diffusion.schedule import make_scheduler_config
    from pairforge.train.pipeline_export import pipeline_blocker

    task = get_task("mask")
    scheduler = make_scheduler_config("cosine", "eps", 1000)
    assert pipeline_blocker(task, tiny_fraction_unet(drop_prob=0.1), scheduler) is None
    reason = pipeline_blocker(task, tiny_fraction_unet(drop_prob=0.0), scheduler)
    assert "model.fraction_drop_prob=0" in reason and "never trained" in reason


def test_bench_fractions_quick(tmp_path):
    bench_fractions = load_bench("bench_fractions")
    out = tmp_path / "bench.json"
    result = bench_fractions.main(
        ["--quick", "--fid", "--work", str(tmp_path / "work"), "--json", str(out)]
    )
    assert json.loads(out.read_text())["settings"]["quick"] is True
    assert set(result["summary"]) == set(NAMES)
    for name, row in result["summary"].items():
        low, high = row["training_range"]
        assert 0 <= low <= high <= 1 and row["inside_mae"] >= 0
        inside = [r for r in result["rows"] if r["class"] == name and r["inside"]]
        assert len(inside) == 3 and inside[0]["target"] == pytest.approx(low)
    for row in result["rows"]:
        assert sum(row["target_vector"].values()) == pytest.approx(1)
        assert sum(row["achieved_mean"].values()) == pytest.approx(1, abs=1e-5)
    assert result["unconditional"]["mask_stats"]["grain"]["components_per_mask"] >= 0
    assert result["unconditional"]["mask_fid"] >= 0
    assert all(row["mask_fid"] >= 0 for row in result["rows"])


def test_two_stage_steers_its_mask_stage(tmp_path):
    from test_generate_cli import save_run

    from pairforge.train.loop import train

    data = write_tiny_dataset(tmp_path / "data")
    config = tiny_config(data, "task=mask", "model.fraction_conditioning=true")
    mask_run = train(config, tmp_path / "mask")
    sdm_run = save_run(tmp_path / "sdm", "sdm")
    common = ["--pipeline", "two-stage", "--mask-run", mask_run, "--sdm-run", sdm_run, "--n", 2]
    result = invoke(*common, *FAST, "--fractions", "binder=0.3,grain=0.6", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output + repr(result.exception)
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["fractions"]["target"] == pytest.approx(
        {"binder": 0.3, "grain": 0.6, "pore": 0.1}
    )
    assert manifest["samples"][1]["target_fractions"]["pore"] == pytest.approx(0.1)
    # paint has no mask DDPM to steer
    painted = invoke("--pipeline", "paint", "--sdm-run", sdm_run, "--masks", tmp_path / "o",
                     "--fractions", "grain=0.5", *FAST, "--out", tmp_path / "p")  # fmt: skip
    assert isinstance(painted.exception, PairforgeError)
    assert "joint or two-stage, not --pipeline paint" in str(painted.exception)


def test_a_conditioned_joint_run_is_a_feature_source(steered_run):
    """seg reads features of the bare UNet2DModel: the model under the dropped condition."""
    from diffusers import UNet2DModel

    from pairforge.seg.source import load_feature_source

    source = load_feature_source(steered_run)
    assert type(source.model) is UNet2DModel
    from pairforge.core.run import load_run

    size = int(source.extra["resolution"])
    x = torch.randn(1, source.model.config.in_channels, size, size)
    t = torch.tensor([10])
    wrapped = load_run(steered_run).model
    assert type(wrapped) is not UNet2DModel  # the run holds the conditioned wrapper
    with torch.no_grad():
        assert torch.equal(source.model(x, t).sample, wrapped(x, t).sample)


@pytest.mark.slow
def test_bench_oversample_tiny(tmp_path):
    """bench_oversample end to end on a tiny steered joint run (budget 'all') and a dataset
    with a test split: three comparisons paired over 2 seeds, one shared real-only protocol."""
    from pairforge.data.dataset import DatasetWriter, load_dataset
    from pairforge.train.loop import train

    bench_oversample = load_bench("bench_oversample")

    tiny = load_dataset(write_tiny_dataset(tmp_path / "tiny", num_samples=4))
    with DatasetWriter(tmp_path / "data", tiny.spec.model_copy(update={"splits": {}})) as writer:
        for index, sample_id in enumerate(tiny.ids(None)):
            image, mask = tiny.read_pair(sample_id)
            writer.add(sample_id, image, mask, split="test" if index == 3 else "train")
    config = tiny_config(tmp_path / "data", "task=joint", "model.fraction_conditioning=true",
                         "data.labels=all")  # fmt: skip
    run = train(config, tmp_path / "run")
    out = tmp_path / "b.json"
    result = bench_oversample.main([
        "--data", str(tmp_path / "data"), "--joint-run", str(run), "--out", str(tmp_path / "o"),
        "--n", "4", "--seeds", "0,1", "--steps", "2", "--sample-steps", "2",
        "--json", str(out), "--markdown", str(tmp_path / "b.md")])  # fmt: skip
    assert json.loads(out.read_text())["oversample_minus_train"]["n"] == 2
    assert set(result["class_iou"]) == {"real", "train", "oversample"}
    assert all(0 <= v <= 1 for v in result["fraction"].values())
    data = load_dataset(tmp_path / "data")
    real = np.mean([(data.read_mask(i) == 2).mean() for i in data.ids(None)])
    assert result["real_fraction"] == pytest.approx(real) and real > 0
    manifest = json.loads((tmp_path / "o" / "sets" / "oversample" / "manifest.json").read_text())
    assert manifest["fractions"]["oversample"] == {"pore": 3.0}
    text = (tmp_path / "b.md").read_text()
    assert "| oversample |" in text and "Oversample - train, pore IoU" in text
