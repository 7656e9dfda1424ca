"""Bad-input corpus for runs, checkpoints and outputs: every case exits 2 with a clear message.

Each case builds a broken run / config / output folder in tmp_path, runs the real console entry
point (`pairforge.cli.main`, as the `pairforge` command does) and checks: exit code 2, one
`error: ` line naming the file, the words of the reason and the fix, and no traceback. Faults
the test machine cannot produce for real (a read-only file system as root, a full disk) are
injected at the system call the code makes (tempfile.mkstemp, torch.save, tifffile.imwrite).
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from test_train_helpers import tiny_config, write_tiny_dataset

from pairforge.train.loop import train

pytestmark = pytest.mark.usefixtures("single_thread_module")


GENERATE_FAST = ["--sampler", "ddim", "--steps", "2", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A tiny labeled dataset and a finished 2-step joint run trained on it."""
    root = tmp_path_factory.mktemp("corpus")
    data = write_tiny_dataset(root / "data")
    run = train(tiny_config(data, "task=joint"), root / "run")
    return {"data": data, "run": run}


@dataclass
class Case:
    """setup(tmp_path, made) -> CLI args (after `pairforge`); patch(monkeypatch) injects a
    fault; words: what the error line must contain ({tmp} is replaced by tmp_path)."""

    name: str
    setup: Callable[[Path, dict], list[str]]
    words: list[str]
    patch: Callable[[pytest.MonkeyPatch], None] | None = None
    marks: list = field(default_factory=list)


def train_args(made, out):
    return ["train", "tiny", "--set", f"data.path={made['data']}", "--set", "task=joint",
            "--out", str(out)]  # fmt: skip


def copied_run(tmp, made):
    return Path(shutil.copytree(made["run"], tmp / "run"))


def generate_args(run, out):
    return ["generate", "--pipeline", "joint", "--run", str(run), "--n", "2", "--out", str(out),
            *GENERATE_FAST]  # fmt: skip


def a_file(tmp, name="taken"):
    (tmp / name).write_text("not a folder")
    return tmp / name


def read_only(monkeypatch):
    """Writes in new folders fail like on a read-only mount (root ignores chmod)."""

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("pairforge.io.tempfile.mkstemp", refuse)


def disk_full_in_torch_save(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
            "data/3: file write failed"
        )

    monkeypatch.setattr(torch, "save", refuse)


def disk_full_in_tiff_writes(monkeypatch):
    import tifffile

    def refuse(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(tifffile, "imwrite", refuse)


def with_config_yaml(text):
    def setup(tmp, made):
        run = copied_run(tmp, made)
        (run / "config.yaml").write_text(text)
        return train_args(made, run)

    return setup


def corrupt_model_file(name, content):
    def setup(tmp, made):
        run = copied_run(tmp, made)
        (run / "model" / name).write_bytes(content)
        return generate_args(run, tmp / "gen")

    return setup


def pickled_optimizer(tmp, made):
    run = copied_run(tmp, made)
    state = torch.load(run / "checkpoints/step-00000002/optimizer.pt", weights_only=True)
    state["payload"] = Path("an object")  # any class: weights_only refuses its GLOBAL
    torch.save(state, run / "checkpoints/step-00000002/optimizer.pt")
    return [*train_args(made, run), "--set", "optim.max_steps=3"]


def all_checkpoints_damaged(tmp, made):
    run = copied_run(tmp, made)
    for weights in run.glob("checkpoints/*/model.safetensors"):
        weights.write_bytes(b"\0" * 16)
    return [*train_args(made, run), "--set", "optim.max_steps=3"]


def metrics_with_a_corrupt_middle_line(tmp, made):
    run = copied_run(tmp, made)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("{broken\n" + "\n".join(lines) + "\n")
    return [*train_args(made, run), "--set", "optim.max_steps=3"]


def model_lost_checkpoints_kept(tmp, made):
    run = copied_run(tmp, made)
    shutil.rmtree(run / "model")
    return generate_args(run, tmp / "gen")


def model_as_pickled_bin(tmp, made):
    run = copied_run(tmp, made)
    weights = run / "model" / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(weights), weights.with_suffix(".bin"))
    weights.unlink()
    return generate_args(run, tmp / "gen")


def fewer_pairs_than_the_folder_holds(tmp, made):
    from pairforge.cli import main

    out = tmp / "gen"
    args = generate_args(made["run"], out)
    args[args.index("--n") + 1] = "3"
    run_main(main, args, expect=0)
    return generate_args(made["run"], out)  # --n 2


def seg_fit_corrupt_model(tmp, made):
    run = copied_run(tmp, made)
    (run / "model" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    return ["seg", "fit", "--run", str(run), "--data", str(made["data"]), "--out",
            str(tmp / "head"), "--num-models", "1", "--epochs", "1"]  # fmt: skip


CASES = [
    Case("train --out is a file", lambda t, m: train_args(m, a_file(t)),
         ["{tmp}/taken: run folder cannot be written (exists as a file)", "choose another"]),
    Case("train --out under a file", lambda t, m: train_args(m, a_file(t) / "run"),
         ["{tmp}/taken/run: run folder cannot be written", "parent path exists as a file"]),
    Case("train --out read-only", lambda t, m: train_args(m, t / "run"),
         ["{tmp}/run: run folder cannot be written (read-only file system)", "writable"],
         patch=read_only),
    Case("train RUN/config.yaml empty", with_config_yaml(""),
         ["{tmp}/run/config.yaml: is empty", "delete it"]),
    Case("train RUN/config.yaml broken", with_config_yaml("task: joint\noptim: {lr: [\n"),
         ["{tmp}/run/config.yaml: cannot be read as YAML", "restore it"]),
    Case("train RUN/config.yaml a list", with_config_yaml("- 1\n- 2\n"),
         ["{tmp}/run/config.yaml: holds a list, not a mapping"]),
    Case("train metrics.jsonl corrupt mid-file", metrics_with_a_corrupt_middle_line,
         ["{tmp}/run/metrics.jsonl: line 1 is not valid JSON", "repair that line"]),
    Case("train pickled optimizer.pt", pickled_optimizer,
         ["step-00000002/optimizer.pt: holds pickled Python objects", "refused"]),
    Case("train every checkpoint damaged", all_checkpoints_damaged,
         ["{tmp}/run/checkpoints: none of the 2 checkpoints can be read", "new --out"]),
    Case("train disk full in a checkpoint", lambda t, m: train_args(m, t / "run"),
         ["{tmp}/run/checkpoints/step-00000001: checkpoint cannot be written (disk full)",
          "free disk space"], patch=disk_full_in_torch_save),
    Case("train diverges (NaN loss)",
         lambda t, m: [*train_args(m, t / "run"), "--set", "optim.lr=1e30",
                       "--set", "optim.max_steps=4"],
         ["{tmp}/run: training stopped at step 2: the loss is nan", "lower optim.lr",
          "checkpoint (step 1) is kept"]),
    Case("generate --out is a file", lambda t, m: generate_args(m["run"], a_file(t)),
         ["{tmp}/taken: generated dataset folder cannot be written (exists as a file)"]),
    Case("generate --out read-only", lambda t, m: generate_args(m["run"], t / "gen"),
         ["{tmp}/gen: generated dataset folder cannot be written (read-only file system)"],
         patch=read_only),
    Case("generate disk full", lambda t, m: generate_args(m["run"], t / "gen"),
         ["{tmp}/gen/images/", "cannot be written (disk full)", "free disk space"],
         patch=disk_full_in_tiff_writes),
    Case("generate corrupt model safetensors",
         corrupt_model_file("diffusion_pytorch_model.safetensors", b"\x08" + b"\0" * 40),
         ["{tmp}/run/model/diffusion_pytorch_model.safetensors: cannot be loaded",
          "damaged", "rerun the training command"]),
    Case("generate corrupt pairforge.json", corrupt_model_file("pairforge.json", b'{"task": '),
         ["{tmp}/run/model/pairforge.json: cannot be read as JSON", "rerun the training"]),
    Case("generate corrupt scheduler_config.json",
         corrupt_model_file("scheduler_config.json", b"\xff\xfe"),
         ["{tmp}/run/model/scheduler_config.json: cannot be read as JSON"]),
    Case("generate model/ lost, checkpoints kept", model_lost_checkpoints_kept,
         ["{tmp}/run: no model/pairforge.json although the run has checkpoints",
          "rebuilds model/"]),
    Case("generate pickled .bin instead of safetensors", model_as_pickled_bin,
         ["diffusion_pytorch_model.safetensors: missing (pairforge loads safetensors only)"]),
    Case("generate --n below the pairs on disk", fewer_pairs_than_the_folder_holds,
         ["{tmp}/gen: already holds 3 generated pairs (up to gen000002), more than --n 2",
          "pass --n 3 or more", "new --out"]),
    Case("seg fit corrupt model safetensors", seg_fit_corrupt_model,
         ["{tmp}/run/model/diffusion_pytorch_model.safetensors: cannot be loaded"]),
    Case("sample --out is a file",
         lambda t, m: ["sample", str(m["run"]), "--n", "1", "--steps", "2", "--out",
                       str(a_file(t))],
         ["{tmp}/taken: sample folder cannot be written (exists as a file)"]),
]  # fmt: skip


def run_main(main, args, expect):
    """Run the console entry point with `args`; returns its exit code (SystemExit)."""
    argv = sys.argv
    sys.argv = ["pairforge", *args]
    try:
        with pytest.raises(SystemExit) as exited:
            main()
    finally:
        sys.argv = argv
    code = exited.value.code or 0
    assert code == expect
    return code


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_a_clear_error(case, made, tmp_path, monkeypatch, capsys):
    from pairforge.cli import main

    os.environ.pop("PAIRFORGE_FAULT", None)
    args = case.setup(tmp_path, made)
    capsys.readouterr()
    if case.patch is not None:
        case.patch(monkeypatch)
    run_main(main, args, expect=2)
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert "Traceback" not in output, output
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output
    for words in case.words:
        assert words.replace("{tmp}", str(tmp_path)) in errors[0], (words, errors[0])
