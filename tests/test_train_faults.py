"""Run files survive faults: torn metrics, lost / stale model/, damaged checkpoints, full disks,
non-finite training, pickled objects; plus the atomic-write module they all use."""

from __future__ import annotations

import errno
import json
import os
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file
from test_train_helpers import tiny_config, write_tiny_dataset

from pairforge import io
from pairforge.core.run import load_run
from pairforge.errors import PairforgeError
from pairforge.train.checkpoint import list_checkpoints, save_checkpoint
from pairforge.train.loop import train
from pairforge.train.run import write_inference_model

pytestmark = [
    pytest.mark.usefixtures("single_thread_module"),
    pytest.mark.filterwarnings("error::UserWarning"),  # warnings are asserted, not lost
]


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="module")
def finished(data_path, tmp_path_factory):
    """An uninterrupted 3-step run (checkpoints 2 and 3 kept): the reference for every repair."""
    return train(tiny_config(data_path, "optim.max_steps=3"), tmp_path_factory.mktemp("ref") / "r")


def assert_same_weights(a, b):
    weights_a, weights_b = load_file(a), load_file(b)
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), key


def model_weights(run_dir):
    return run_dir / "model" / "diffusion_pytorch_model.safetensors"


def metric_steps(run_dir):
    return [row["step"] for row in io.read_jsonl(run_dir / "metrics.jsonl")]


# The atomic-write module.


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path):
    path = tmp_path / "state.json"
    io.atomic_write_json(path, {"step": 1})

    def half_then_fail(tmp):
        tmp.write_text('{"st')
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        io.atomic_write(path, half_then_fail)
    assert json.loads(path.read_text()) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temporary left


def test_read_jsonl_drops_a_torn_last_line_and_rejects_a_corrupt_middle_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    io.append_jsonl(path, {"step": 1})
    io.append_jsonl(path, {"step": 2})
    with open(path, "ab") as f:
        f.write(b'{"step": 3, "lo')
    with pytest.warns(UserWarning, match=r"metrics.jsonl: line 3 is incomplete"):
        assert io.read_jsonl(path) == [{"step": 1}, {"step": 2}]
    path.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(PairforgeError, match=r"metrics.jsonl: line 2 is not valid JSON"):
        io.read_jsonl(path)
    assert io.read_jsonl(tmp_path / "absent.jsonl") == []


def test_ensure_writable_dir_names_the_reason(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(PairforgeError, match=r"file: run folder cannot be written \(exists as a"):
        io.ensure_writable_dir(tmp_path / "file", "run folder")
    with pytest.raises(PairforgeError, match="a parent path exists as a file"):
        io.ensure_writable_dir(tmp_path / "file" / "run", "run folder")
    assert io.ensure_writable_dir(tmp_path / "a" / "b", "run folder").is_dir()
    for code, words in [(errno.EROFS, "read-only file system"), (errno.ENOSPC, "disk full")]:

        def refuse(*args, code=code, **kwargs):
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(io.tempfile, "mkstemp", refuse)
        with pytest.raises(PairforgeError, match=words):
            io.ensure_writable_dir(tmp_path / "c", "run folder")
    # torch.save's own wording for a full disk is translated too.
    message = "[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file"
    assert io.os_error_reason(RuntimeError(message))[0] == "disk full"


# Lost, stale and damaged run files.


@pytest.mark.parametrize("damage", ["lost", "truncated weights"])
def test_a_finished_run_whose_model_was_lost_rebuilds_it(finished, data_path, tmp_path, damage):
    run_dir = shutil.copytree(finished, tmp_path / "run")
    if damage == "lost":
        shutil.rmtree(run_dir / "model")
    else:
        weights = model_weights(run_dir)
        weights.write_bytes(weights.read_bytes()[:-100])
        with pytest.raises(PairforgeError, match="rerun the training command"):
            load_run(run_dir)
    train(tiny_config(data_path, "optim.max_steps=3"), run_dir)  # was: "has no model/"
    assert_same_weights(model_weights(run_dir), model_weights(finished))
    assert load_run(run_dir).info["step"] == 3


def test_a_kill_during_the_final_model_write_is_repaired(finished, data_path, tmp_path):
    """model/ still holds step 2 and .model-tmp is left: the rerun must end with step 3."""
    run_dir = shutil.copytree(finished, tmp_path / "run")
    step_2 = load_file(run_dir / "checkpoints" / "step-00000002" / "ema.safetensors")
    stale = load_run(run_dir)
    stale.model.load_state_dict(step_2)
    write_inference_model(run_dir, stale.model, stale.scheduler_config, {**stale.info, "step": 2})
    shutil.copytree(run_dir / "model", run_dir / ".model-tmp")
    with pytest.warns(UserWarning, match="holds step 2 but the newest checkpoint is step 3"):
        load_run(run_dir)  # readers are told until the rerun repairs it
    train(tiny_config(data_path, "optim.max_steps=3"), run_dir)
    assert_same_weights(model_weights(run_dir), model_weights(finished))
    assert not (run_dir / ".model-tmp").exists()
    assert load_run(run_dir).info["step"] == 3


def test_a_torn_metrics_line_is_dropped_on_resume(finished, data_path, tmp_path):
    run_dir = shutil.copytree(finished, tmp_path / "run")
    with open(run_dir / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 4, "loss": 0.')  # a full disk cut this append short
    with pytest.warns(UserWarning, match="line 4 is incomplete"):
        train(tiny_config(data_path, "optim.max_steps=4"), run_dir)  # was: JSONDecodeError
    assert metric_steps(run_dir) == [1, 2, 3, 4]


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(finished, data_path, tmp_path):
    first = train(tiny_config(data_path, "optim.max_steps=2"), tmp_path / "run")
    newest = first / "checkpoints" / "step-00000002" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated, as a full disk leaves it
    with pytest.warns(UserWarning, match=r"step-00000002: checkpoint of step 2 cannot be read"):
        train(tiny_config(data_path, "optim.max_steps=3"), first)  # was: SafetensorError
    assert [s for s, _ in list_checkpoints(first)] == [2, 3]
    assert_same_weights(model_weights(first), model_weights(finished))
    assert metric_steps(first) == [1, 2, 3]


def test_a_pickled_object_in_optimizer_pt_is_refused(finished, data_path, tmp_path):
    run_dir = shutil.copytree(finished, tmp_path / "run")
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    optimizer_file = run_dir / "checkpoints" / "step-00000003" / "optimizer.pt"
    state = torch.load(optimizer_file, weights_only=True)
    state["payload"] = Payload()
    torch.save(state, optimizer_file)
    with pytest.raises(PairforgeError, match=r"optimizer.pt: holds pickled Python objects"):
        train(tiny_config(data_path, "optim.max_steps=4"), run_dir)
    assert not marker.exists()


# Full disks.


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(finished, data_path, tmp_path):
    real_save, calls = torch.save, []

    def save_until_the_disk_fills(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # the step-2 checkpoint's optimizer.pt
            raise RuntimeError(
                "[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed "
                "writing file data/3: file write failed"
            )
        return real_save(obj, path, *args, **kwargs)

    config = tiny_config(data_path, "optim.max_steps=3")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "save", save_until_the_disk_fills)
        with pytest.raises(PairforgeError) as caught:
            train(config, tmp_path / "run")
    message = str(caught.value)
    assert "step-00000002: checkpoint cannot be written (disk full)" in message
    assert "checkpoint step 1 is kept" in message
    run_dir = tmp_path / "run"
    assert [s for s, _ in list_checkpoints(run_dir)] == [1]
    assert not any(p.name.startswith(".tmp") for p in (run_dir / "checkpoints").iterdir())
    train(config, run_dir)  # space freed: the rerun continues and ends like the reference
    assert_same_weights(model_weights(run_dir), model_weights(finished))
    assert metric_steps(run_dir) == [1, 2, 3]


def test_disk_full_while_appending_metrics(finished, data_path, tmp_path, monkeypatch):
    real_append = io.append_jsonl

    def append_until_the_disk_fills(path, obj):
        if obj["step"] == 2:
            with open(path, "ab") as f:
                f.write(json.dumps(obj).encode()[:10])
            raise OSError(errno.ENOSPC, "No space left on device")
        real_append(path, obj)

    config = tiny_config(data_path, "optim.max_steps=3")
    monkeypatch.setattr(io, "append_jsonl", append_until_the_disk_fills)
    with pytest.raises(PairforgeError, match=r"metrics.jsonl: training metrics cannot be written "):
        train(config, tmp_path / "run")
    monkeypatch.setattr(io, "append_jsonl", real_append)
    with pytest.warns(UserWarning, match="line 2 is incomplete"):
        train(config, tmp_path / "run")
    assert metric_steps(tmp_path / "run") == [1, 2, 3]
    assert_same_weights(model_weights(tmp_path / "run"), model_weights(finished))


def test_the_metrics_rewrite_on_resume_never_truncates(finished, data_path, tmp_path, monkeypatch):
    """Resuming from step 2 drops row 3 by an atomic rewrite: a failure leaves all rows."""
    run_dir = shutil.copytree(finished, tmp_path / "run")
    shutil.rmtree(run_dir / "checkpoints" / "step-00000003")

    real_replace = os.replace

    def replace_fails(src, dst):
        if str(dst).endswith("metrics.jsonl"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", replace_fails)
    with pytest.raises(PairforgeError, match=r"metrics.jsonl: training metrics .*disk full"):
        train(tiny_config(data_path, "optim.max_steps=3"), run_dir)
    monkeypatch.undo()
    assert metric_steps(run_dir) == [1, 2, 3]  # the old in-place rewrite had emptied it here
    train(tiny_config(data_path, "optim.max_steps=3"), run_dir)
    assert metric_steps(run_dir) == [1, 2, 3]
    assert_same_weights(model_weights(run_dir), model_weights(finished))


# Non-finite training.


def test_a_diverging_run_stops_and_keeps_only_finite_weights(data_path, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(PairforgeError) as caught:
        train(tiny_config(data_path, "optim.lr=1e30", "optim.max_steps=4"), run_dir)
    message = str(caught.value)
    for words in ("training stopped at step 2", "loss is nan", "checkpoint (step 1) is kept",
                  "lower optim.lr (now 1e+30)", "pairforge data check"):  # fmt: skip
        assert words in message, words
    assert [s for s, _ in list_checkpoints(run_dir)] == [1]
    files = [model_weights(run_dir), *run_dir.glob("checkpoints/*/*.safetensors")]
    for file in files:
        for key, tensor in load_file(file).items():
            assert torch.isfinite(tensor).all(), (file, key)


def test_save_checkpoint_refuses_non_finite_weights(tmp_path):
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    optimizer = torch.optim.AdamW(model.parameters())
    with pytest.raises(PairforgeError, match=r"1 tensors of model.safetensors hold NaN/Inf"):
        save_checkpoint(tmp_path, 1, model, None, optimizer, {})
    assert list_checkpoints(tmp_path) == []
    with warnings.catch_warnings():
        model.weight.data.fill_(0.0)
        save_checkpoint(tmp_path, 1, model, None, optimizer, {})
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]
