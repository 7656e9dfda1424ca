"""Generated datasets on disk: readable by the loaders, pass the data check, manifest, resume."""

import json

import numpy as np
import pytest
from test_generate_pipelines import FAST, tiny_run

from pairforge.core.dataset_writer import file_sha256
from pairforge.data.check import check_dataset
from pairforge.data.dataset import load_dataset
from pairforge.errors import PairforgeError
from pairforge.generate.pipelines import generate_joint
from pairforge.generate.writer import (
    GenerationPlan,
    RunRef,
    sample_id,
    write_generated_dataset,
)


def joint_plan(tmp_path, num_samples, **overrides):
    run_dir = tmp_path / "joint-run"
    run = tiny_run("joint", save_to=run_dir)
    kwargs = dict(
        pipeline="joint",
        runs={"joint": RunRef(run, run_dir)},
        num_samples=num_samples,
        base_seed=100,
        batch_size=2,
        sampling=FAST,
    )
    kwargs.update(overrides)
    return GenerationPlan(**kwargs)


def test_joint_dataset_reads_back_and_passes_check(tmp_path):
    plan = joint_plan(tmp_path, 3)
    out = tmp_path / "gen"
    manifest = write_generated_dataset(plan, out, progress=False)

    ds = load_dataset(out)
    assert ds.ids() == [sample_id(i) for i in range(3)]
    assert ds.num_channels == 2 and ds.num_classes == 3
    report = check_dataset(out)
    assert report["ok"], report["problems"]
    # Images are in physical units and equal the pipeline's output for the recorded seed.
    expected = generate_joint(plan.runs["joint"].run, [101], FAST)
    # Batch 2 on disk vs batch 1 here: equal up to round-off of batched kernels, which the
    # untrained model's far-out-of-range samples (values ~455) carry through the solver steps
    # to ~1e-4 relative; another seed differs by O(1).
    np.testing.assert_allclose(
        ds.read_image("gen000001"), expected.physical_images()[0], rtol=3e-4, atol=2e-3
    )
    assert np.array_equal(ds.read_mask("gen000001"), expected.masks_numpy()[0])

    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    assert [s["seed"] for s in on_disk["samples"]] == [100, 101, 102]
    weights = tmp_path / "joint-run" / "model" / "diffusion_pytorch_model.safetensors"
    assert on_disk["checkpoints"]["joint"]["sha256"] == {weights.name: file_sha256(weights)}
    assert on_disk["sampler"] == "ddim" and on_disk["steps"] == 3
    assert on_disk["guidance_scale"] is None and on_disk["sr"] is None
    assert (out / "grid.png").stat().st_size > 1000


def test_resume_keeps_finished_samples_and_adds_the_rest(tmp_path):
    out = tmp_path / "gen"
    write_generated_dataset(joint_plan(tmp_path, 2), out, progress=False)
    first_files = {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    manifest = write_generated_dataset(joint_plan(tmp_path, 4), out, progress=False)
    assert manifest["generated_this_session"]["samples"] == 2
    assert manifest["num_samples"] == 4
    for name, mtime in first_files.items():
        assert (out / "images" / name).stat().st_mtime_ns == mtime
    assert load_dataset(out).ids() == [sample_id(i) for i in range(4)]
    # Nothing left to do: a third call generates nothing.
    again = write_generated_dataset(joint_plan(tmp_path, 4), out, progress=False)
    assert again["generated_this_session"]["samples"] == 0


def test_resume_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "gen"
    write_generated_dataset(joint_plan(tmp_path, 1), out, progress=False)
    with pytest.raises(PairforgeError, match="base_seed"):
        write_generated_dataset(joint_plan(tmp_path, 2, base_seed=5), out, progress=False)


def test_shards_partition_the_indices(tmp_path):
    """Two 'processes' run one after the other give the same dataset as one process."""
    out = tmp_path / "sharded"
    plan = joint_plan(tmp_path, 3)
    assert (
        write_generated_dataset(plan, out, process_index=1, num_processes=2, progress=False) is None
    )
    assert sorted(p.stem for p in (out / ".generate" / "records").iterdir()) == ["gen000001"]
    manifest = write_generated_dataset(plan, out, process_index=0, num_processes=2, progress=False)
    assert [s["id"] for s in manifest["samples"]] == [sample_id(i) for i in range(3)]
    single = tmp_path / "single"
    write_generated_dataset(plan, single, progress=False)
    for i in range(3):
        a, b = load_dataset(out), load_dataset(single)
        np.testing.assert_allclose(
            a.read_image(sample_id(i)), b.read_image(sample_id(i)), atol=2e-3, rtol=3e-4
        )


def test_two_stage_with_sr_manifest(tmp_path):
    runs = {
        "mask": RunRef(tiny_run("mask", resolution=8, save_to=tmp_path / "m"), tmp_path / "m"),
        "sdm": RunRef(tiny_run("sdm", resolution=8, save_to=tmp_path / "s"), tmp_path / "s"),
        "sr": RunRef(tiny_run("sr", resolution=32, save_to=tmp_path / "r"), tmp_path / "r"),
    }
    plan = GenerationPlan(
        "two-stage", runs, num_samples=2, guidance_scale=2.0, sr_noise_level=0.3, sampling=FAST
    )
    manifest = write_generated_dataset(plan, tmp_path / "gen", progress=False)
    ds = load_dataset(tmp_path / "gen")
    assert ds.read_image("gen000000").shape == (2, 32, 32)
    assert ds.read_mask("gen000000").shape == (32, 32)
    assert manifest["guidance_scale"] == 2.0
    assert manifest["sr"] == {"noise_level": 0.3, "low_resolution": 8, "resolution": 32}
    assert set(manifest["checkpoints"]) == {"mask", "sdm", "sr"}
    assert all(0 <= s["sr_mask_agreement"] <= 1 for s in manifest["samples"])
    assert check_dataset(tmp_path / "gen")["ok"]


def test_plan_validation_names_the_flag(tmp_path):
    with pytest.raises(PairforgeError, match="--sdm-run"):
        GenerationPlan("two-stage", {"mask": RunRef(tiny_run("mask"))}, num_samples=1)
    with pytest.raises(PairforgeError, match="--pipeline 'three'"):
        GenerationPlan("three", {}, num_samples=1)
    with pytest.raises(PairforgeError, match="--n 0"):
        GenerationPlan("joint", {"joint": RunRef(tiny_run("joint"))}, num_samples=0)


def test_resume_accepts_a_moved_run_but_not_other_weights(tmp_path):
    out = tmp_path / "gen"
    plan = joint_plan(tmp_path, 1)
    write_generated_dataset(plan, out, progress=False)
    moved = tmp_path / "moved-run"
    (tmp_path / "joint-run").rename(moved)
    plan.runs["joint"] = RunRef(plan.runs["joint"].run, moved)
    plan.num_samples = 2
    assert write_generated_dataset(plan, out, progress=False)["num_samples"] == 2
    retrained = tiny_run("joint", save_to=tmp_path / "other-run", seed=1)
    plan.runs["joint"] = RunRef(retrained, tmp_path / "other-run")
    with pytest.raises(PairforgeError, match="checkpoints"):
        write_generated_dataset(plan, out, progress=False)


def test_resume_of_a_set_started_before_label_budgets_were_recorded(tmp_path):
    out = tmp_path / "gen"
    plan = joint_plan(tmp_path, 1)
    write_generated_dataset(plan, out, progress=False)
    stored = out / ".generate" / "settings.json"
    settings = json.loads(stored.read_text())
    assert "label_budget" in settings["checkpoints"]["joint"]
    for entry in settings["checkpoints"].values():  # as an older version wrote it
        del entry["label_budget"], entry["reads_masks"]
    stored.write_text(json.dumps(settings))
    plan.num_samples = 2
    manifest = write_generated_dataset(plan, out, progress=False)
    assert manifest["num_samples"] == 2 and manifest["checkpoints"]["joint"]["reads_masks"]


def write_mask_dataset(path, shapes, spec):
    """Labeled 'user-drawn' masks (images are placeholders) of the given shapes."""
    from pairforge.data.dataset import DatasetWriter

    with DatasetWriter(path, spec) as writer:
        for k, (h, w) in enumerate(shapes):
            mask = np.zeros((h, w), np.int64)
            mask[: h // 2] = 1 + k % 2
            writer.add(f"drawn{k}", np.zeros((spec.num_channels, h, w), np.float32), mask)
    return path


def test_paint_user_masks_of_two_sizes(tmp_path):
    run_dir = tmp_path / "sdm-run"
    sdm = tiny_run("sdm", save_to=run_dir)
    source = write_mask_dataset(tmp_path / "drawn", [(16, 16), (16, 24)], sdm.spec)
    plan = GenerationPlan(
        "paint", {"sdm": RunRef(sdm, run_dir)}, num_samples=3, batch_size=4,
        guidance_scale=2.0, sampling=FAST, mask_source=source,
    )  # fmt: skip
    manifest = write_generated_dataset(plan, tmp_path / "gen", progress=False)
    assert [s["mask_source_id"] for s in manifest["samples"]] == ["drawn0", "drawn1", "drawn0"]
    ds, drawn = load_dataset(tmp_path / "gen"), load_dataset(source)
    for sample in manifest["samples"]:
        assert np.array_equal(ds.read_mask(sample["id"]), drawn.read_mask(sample["mask_source_id"]))
    assert ds.read_image("gen000001").shape == (2, 16, 24)
    # Same mask, other seed: another image.
    assert np.abs(ds.read_image("gen000000") - ds.read_image("gen000002")).mean() > 1e-3
    assert manifest["guidance_scale"] == 2.0 and manifest["mask_source"] == str(source.resolve())
    assert check_dataset(tmp_path / "gen")["ok"]


def test_paint_refuses_masks_with_other_classes(tmp_path):
    sdm = tiny_run("sdm")
    other_spec = tiny_run("sdm", num_classes=2).spec
    source = write_mask_dataset(tmp_path / "drawn", [(16, 16)], other_spec)
    plan = GenerationPlan(
        "paint", {"sdm": RunRef(sdm)}, num_samples=1, sampling=FAST, mask_source=source
    )
    with pytest.raises(PairforgeError, match="differ from the SDM run"):
        write_generated_dataset(plan, tmp_path / "gen", progress=False)
    with pytest.raises(PairforgeError, match="--masks"):
        GenerationPlan(
            "two-stage", {"mask": RunRef(sdm), "sdm": RunRef(sdm)}, 1, mask_source=source
        )
