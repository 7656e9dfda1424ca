"""Label budgets in training: crops inside the budget, the run record, resumption, manifests."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file
from test_train_helpers import tiny_config, write_tiny_dataset
from typer.testing import CliRunner

from pairforge.cli import app
from pairforge.config import load_config
from pairforge.core.run import load_run
from pairforge.core.tasks import get_task
from pairforge.data.budget import make_budget
from pairforge.data.codec import IGNORE_INDEX
from pairforge.data.dataset import load_dataset
from pairforge.data.views import RandomCropDataset
from pairforge.errors import PairforgeError
from pairforge.train.checkpoint import latest_checkpoint
from pairforge.train.loop import _training_crops, train

pytestmark = pytest.mark.usefixtures("single_thread_module")

# 64 px samples, 32 px tiles (the tiny preset's crop size): 4 tiles each, a pool of 12.
POOL = 12


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny", size=64)


def budget_of(data_path, size=4, seed=0, tile=32):
    return make_budget(load_dataset(data_path), size, seed, tile, "train")


def weights(run_dir) -> dict[str, torch.Tensor]:
    """Every tensor of RUN/model/ and of the last checkpoint's model and EMA weights."""
    out = {}
    for path in sorted((run_dir / "model").glob("*.safetensors")):
        out.update({f"model/{k}": v for k, v in load_file(path).items()})
    for name in ("model.safetensors", "ema.safetensors"):
        out.update(
            {f"{name}/{k}": v for k, v in load_file(latest_checkpoint(run_dir) / name).items()}
        )
    return out


def same_weights(a: dict, b: dict) -> bool:
    assert a.keys() == b.keys() and a
    return all(torch.equal(a[k], b[k]) for k in a)


def test_set_parses_label_keys():
    config = load_config("tiny", ["data.labels=8", "data.label_seed=1", "data.label_tile=64"])
    assert (config.data.labels, config.data.label_seed, config.data.label_tile) == (8, 1, 64)
    assert load_config("tiny", ["data.labels=all"]).data.labels == "all"
    default = load_config("tiny")
    assert (default.data.labels, default.data.label_seed, default.data.label_tile) == (
        None,
        0,
        None,
    )
    assert default.data.label_tile_size == 32  # the crop size
    with pytest.raises(PairforgeError, match=r"data.labels: give a number .* \(got 0\)"):
        load_config("tiny", ["data.labels=0"])
    with pytest.raises(PairforgeError, match=r"data.labels: .*\(got 'some'\)"):
        load_config("tiny", ["data.labels=some"])
    with pytest.raises(
        PairforgeError, match="data.label_tile 16 is smaller than data.crop_size 32"
    ):
        load_config("tiny", ["data.label_tile=16"])


def test_train_flags_set_the_label_keys():
    runner = CliRunner()
    args = ["train", "tiny", "--labels", "8", "--label-seed", "2", "--label-tile", "64"]
    result = runner.invoke(app, [*args, "--dry-run"])
    assert result.exit_code == 0, result.output
    data = yaml.safe_load(result.output)["data"]
    assert (data["labels"], data["label_seed"], data["label_tile"]) == (8, 2, 64)
    result = runner.invoke(app, ["train", "tiny", "--labels", "ALL", "--dry-run"])
    assert yaml.safe_load(result.output)["data"]["labels"] == "all"
    result = runner.invoke(app, ["train", "tiny", "--labels", "eight", "--dry-run"])
    assert isinstance(result.exception, PairforgeError)
    assert "--labels 'eight'" in str(result.exception)


@pytest.mark.parametrize("tile", [32, 48])
def test_training_crops_lie_inside_the_budget_tiles(tmp_path, tile):
    # 96 px samples: 3 x 3 tiles of 32 px or 2 x 2 of 48 px (crops of 32 px move inside them).
    data = write_tiny_dataset(tmp_path / "data", size=96)
    # resolution = crop size: a crop touching one pixel outside the budget shows an IGNORE.
    config = tiny_config(
        data, "task=joint", "data.labels=5", f"data.label_tile={tile}", "data.resolution=32"
    )
    view, crops = _training_crops(config, get_task("joint"), 200)
    budget = budget_of(data, 5, 0, tile)
    assert view.budget == budget and crops.ids == budget.ids
    assert len(crops) == 200 + config.log.num_samples  # training items + preview conditions
    for index in range(len(crops)):
        mask = crops[index]["mask"]
        assert mask.shape == (32, 32)
        assert not (mask == IGNORE_INDEX).any(), index
    # The check can fail: crops drawn anywhere in the samples (the view's masks, but the
    # positions of an unbudgeted dataset) do show IGNORE pixels.
    anywhere = RandomCropDataset(
        HidePositions(view), crops.ids, 32, 32, augment=False, length=50, seed=config.seed
    )
    assert any((anywhere[i]["mask"] == IGNORE_INDEX).any() for i in range(50))


class HidePositions:
    """A budgeted view whose crops are not kept inside its tiles (no `budget` attribute)."""

    def __init__(self, view):
        self.view = view

    def __getattr__(self, name):
        if name == "budget":
            raise AttributeError(name)
        return getattr(self.view, name)


def test_record_holds_the_budget_and_what_the_run_read(data_path, tmp_path, capsys):
    config = tiny_config(data_path, "task=joint", "data.labels=4")
    run_dir = train(config, tmp_path / "joint", progress=True)
    # The start of the progress output says the budget.
    assert "labels: 4 labeled tiles of 32 px (3 fit + 1 select) of split 'train'" in (
        capsys.readouterr().out
    )
    info = json.loads((run_dir / "model" / "pairforge.json").read_text())
    expected = budget_of(data_path, 4)
    assert info["label_budget"] == expected.to_dict() and info["reads_masks"] is True
    assert len(info["label_budget"]["tiles"]) == 4 and info["label_budget"]["pool"] == POOL
    run = load_run(run_dir)
    assert run.label_budget == expected and run.reads_masks is True

    image_dir = train(tiny_config(data_path, "task=image"), tmp_path / "image", progress=True)
    assert "labels:" not in capsys.readouterr().out
    info = json.loads((image_dir / "model" / "pairforge.json").read_text())
    assert info["label_budget"] is None and info["reads_masks"] is False
    image_run = load_run(image_dir)
    assert image_run.label_budget is None and image_run.reads_masks is False

    unbudgeted = load_run(train(tiny_config(data_path, "task=mask"), tmp_path / "mask"))
    assert unbudgeted.label_budget is None and unbudgeted.reads_masks is True


def rewrite_masks(source, target, budget, inside: bool):
    """Copy the dataset, changing every mask pixel outside (or inside) the budget's tiles."""
    shutil.copytree(source, target)
    t = budget.tile_size
    for path in sorted((target / "masks").glob("*.png")):
        mask = np.array(Image.open(path)).astype(np.int64)
        in_budget = np.zeros(mask.shape, bool)
        for sample_id, y, x in budget.tiles:
            if sample_id == path.stem:
                in_budget[y : y + t, x : x + t] = True
        change = in_budget if inside else ~in_budget
        mask[change] = (mask[change] + 1) % 3
        Image.fromarray(mask.astype(np.uint8)).save(path)
    return target


def test_masks_outside_the_budget_do_not_change_the_weights(data_path, tmp_path):
    budget = budget_of(data_path, 4)
    overrides = ("task=joint", "data.labels=4")
    reference = weights(train(tiny_config(data_path, *overrides), tmp_path / "ref"))
    outside = rewrite_masks(data_path, tmp_path / "outside", budget, inside=False)
    assert budget_of(outside, 4) == budget
    changed = weights(train(tiny_config(outside, *overrides), tmp_path / "run-outside"))
    assert same_weights(reference, changed)
    # Without the budget the same change reaches the weights (the masks were really changed).
    full_a = weights(train(tiny_config(data_path, "task=joint"), tmp_path / "full-a"))
    full_b = weights(train(tiny_config(outside, "task=joint"), tmp_path / "full-b"))
    assert not same_weights(full_a, full_b)
    # And a change inside the budget does too.
    inside = rewrite_masks(data_path, tmp_path / "inside", budget, inside=True)
    changed = weights(train(tiny_config(inside, *overrides), tmp_path / "run-inside"))
    assert not same_weights(reference, changed)


def test_bad_budgets_name_the_key_and_leave_no_run_folder(data_path, tmp_path):
    with pytest.raises(PairforgeError, match="data.labels=4: task image reads no masks") as err:
        train(tiny_config(data_path, "task=image", "data.labels=4"), tmp_path / "image")
    assert "remove data.labels" in str(err.value)
    too_many = POOL + 1
    with pytest.raises(PairforgeError, match=f"data.labels={too_many}: split 'train'") as err:
        train(tiny_config(data_path, "task=joint", f"data.labels={too_many}"), tmp_path / "joint")
    assert f"has {POOL} labeled tiles of 32 px; ask for at most {POOL}" in str(err.value)
    # Neither wrote a config.yaml that a corrected rerun would have to match.
    assert not (tmp_path / "image" / "config.yaml").exists()
    assert not (tmp_path / "joint" / "config.yaml").exists()
    train(tiny_config(data_path, "task=joint", f"data.labels={POOL}"), tmp_path / "joint")
    assert load_run(tmp_path / "joint").label_budget.tiles == budget_of(data_path, POOL).tiles


def test_resumed_budget_run_is_identical_and_keeps_its_budget(data_path, tmp_path):
    overrides = ("task=joint", "data.labels=4", "data.label_seed=3", "optim.warmup_steps=3")
    straight = train(tiny_config(data_path, *overrides, "optim.max_steps=4"), tmp_path / "a")
    first = train(tiny_config(data_path, *overrides, "optim.max_steps=2"), tmp_path / "b")
    # The dataset moved (data.path may change on resume): the budget is drawn again, the same.
    moved = shutil.copytree(data_path, tmp_path / "moved")
    resumed = train(tiny_config(moved, *overrides, "optim.max_steps=4"), first)
    assert same_weights(weights(straight), weights(resumed))
    assert load_run(resumed).label_budget == budget_of(data_path, 4, seed=3)
    # Another seed is another budget: refused like any changed setting.
    with pytest.raises(PairforgeError, match="data.label_seed=3"):
        train(tiny_config(data_path, *overrides[:2], "data.label_seed=4"), resumed)
    # Other data at data.path (here: one sample fewer) would give another budget: refused.
    other = shutil.copytree(data_path, tmp_path / "other")
    spec = yaml.safe_load((other / "dataset.yaml").read_text())
    dropped = spec["splits"]["train"].pop(0)
    for path in [*other.glob(f"images/{dropped}*"), *other.glob(f"masks/{dropped}*")]:
        path.unlink()
    (other / "dataset.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(PairforgeError, match="trained on the budget 4 labeled tiles") as err:
        train(tiny_config(other, *overrides, "optim.max_steps=5"), resumed)
    assert "the data changed" in str(err.value)


def test_runs_from_before_label_budgets_still_resume_and_load(data_path, tmp_path):
    run_dir = train(tiny_config(data_path, "task=joint"), tmp_path / "old")
    config_path, info_path = run_dir / "config.yaml", run_dir / "model" / "pairforge.json"
    config = yaml.safe_load(config_path.read_text())
    for key in ("labels", "label_seed", "label_tile"):
        del config["data"][key]
    config_path.write_text(yaml.safe_dump(config))
    info = json.loads(info_path.read_text())
    del info["label_budget"], info["reads_masks"]
    info_path.write_text(json.dumps(info))
    run = load_run(run_dir)
    assert run.label_budget is None and run.reads_masks is True  # the joint task's
    train(tiny_config(data_path, "task=joint", "optim.max_steps=3"), run_dir)
    assert json.loads(info_path.read_text())["step"] == 3


def test_sample_and_generate_manifests_carry_the_budget(data_path, tmp_path):
    runner = CliRunner()
    run_dir = tmp_path / "run"
    result = runner.invoke(
        app, ["train", "tiny", "--set", f"data.path={data_path}", "--set", "task=joint",
              "--set", "data.labels=4", "--set", "data.label_seed=1", "--out", str(run_dir)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output + repr(result.exception)
    expected = budget_of(data_path, 4, seed=1).to_dict()
    fast = ["--sampler", "ddim", "--steps", "2", "--device", "cpu"]
    result = runner.invoke(
        app, ["generate", "--pipeline", "joint", "--run", str(run_dir), "--n", "2",
              "--out", str(tmp_path / "gen"), "--no-progress", *fast],
    )  # fmt: skip
    assert result.exit_code == 0, result.output + repr(result.exception)
    result = runner.invoke(
        app, ["sample", str(run_dir), "--n", "2", "--out", str(tmp_path / "sample"), *fast]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    for out in ("gen", "sample"):
        entry = json.loads((tmp_path / out / "manifest.json").read_text())["checkpoints"]["joint"]
        assert entry["reads_masks"] is True, out
        assert entry["label_budget"] == expected, out
    image_run = train(tiny_config(data_path, "task=image"), tmp_path / "image")
    result = runner.invoke(
        app, ["sample", str(image_run), "--n", "1", "--out", str(tmp_path / "image-sample"), *fast]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    manifest = json.loads((tmp_path / "image-sample" / "manifest.json").read_text())
    entry = manifest["checkpoints"]["image"]
    assert entry["reads_masks"] is False and entry["label_budget"] is None
