"""channels_last: auto: measured once per machine and cached, leaves the model alone, and a
run trains in the layout it chose; the layout changes no math beyond rounding."""

from __future__ import annotations

import json

import pytest
import torch
from test_train_helpers import tiny_config, write_tiny_dataset

from pairforge.models.factory import build_model
from pairforge.train import memory_format
from pairforge.train.loop import train

pytestmark = pytest.mark.usefixtures("single_thread_module")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(memory_format.CACHE_ENV, str(folder))
    return folder


def _inputs():
    g = torch.Generator().manual_seed(0)
    return {"x": torch.randn(4, 2, 16, 16, generator=g), "t": torch.tensor([1, 200, 500, 999])}


def test_decide_needs_a_clear_gain():
    assert memory_format.decide({"contiguous": 1.0, "channels_last": 0.90})
    assert not memory_format.decide({"contiguous": 1.0, "channels_last": 0.97})  # within 5 %
    assert not memory_format.decide({"contiguous": 1.0, "channels_last": 1.20})


def test_explicit_settings_are_not_measured(cache):
    model = build_model("UNet2DModel", "tiny", 2, 2, 16)

    def no_probe():
        raise AssertionError("an explicit setting must not build probe inputs")

    for setting in (True, False):
        choice = memory_format.choose_channels_last(
            setting, model, no_probe, torch.device("cpu"), False
        )
        assert (choice.channels_last, choice.source, choice.seconds) == (setting, "config", {})
    assert not (cache / memory_format.CACHE_FILE).exists()


def test_auto_measures_once_then_reads_the_cache(cache):
    torch.manual_seed(0)
    model = build_model("UNet2DModel", "tiny", 2, 2, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng_before = torch.random.get_rng_state()
    cpu = torch.device("cpu")

    first = memory_format.choose_channels_last("auto", model, _inputs, cpu, False)
    assert first.source == "probe"
    assert set(first.seconds) == {"contiguous", "channels_last"}
    assert all(s > 0 for s in first.seconds.values())
    assert first.channels_last == memory_format.decide(first.seconds)
    # The probe works on copies: weights, gradients, layout and the global RNG are untouched.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert all(p.is_contiguous() for p in model.parameters())
    assert torch.equal(torch.random.get_rng_state(), rng_before)

    entries = json.loads((cache / memory_format.CACHE_FILE).read_text())
    assert len(entries) == 1
    (entry,) = entries.values()
    assert entry["channels_last"] == first.channels_last
    assert entry["seconds"] == pytest.approx(first.seconds)
    assert entry["torch"] == torch.__version__

    again = memory_format.choose_channels_last("auto", model, _inputs, cpu, False)
    assert (again.source, again.channels_last) == ("cache", first.channels_last)
    assert again.seconds == pytest.approx(first.seconds)
    assert "measured earlier on this machine" in again.describe()

    # Another input shape or precision is another measurement.
    bigger = lambda: {"x": torch.randn(4, 2, 32, 32), "t": torch.tensor([1, 2, 3, 4])}  # noqa: E731
    assert memory_format.choose_channels_last("auto", model, bigger, cpu, False).source == "probe"
    assert len(json.loads((cache / memory_format.CACHE_FILE).read_text())) == 2


def test_a_damaged_cache_is_measured_again(cache):
    cache.mkdir()
    (cache / memory_format.CACHE_FILE).write_text("{not json")
    model = build_model("UNet2DModel", "tiny", 2, 2, 16)
    choice = memory_format.choose_channels_last("auto", model, _inputs, torch.device("cpu"), False)
    assert choice.source == "probe"
    assert len(json.loads((cache / memory_format.CACHE_FILE).read_text())) == 1


def test_layouts_give_the_same_forward_to_rounding():
    torch.manual_seed(0)
    model = build_model("UNet2DModel", "tiny", 2, 2, 16).eval()
    inputs = _inputs()
    with torch.no_grad():
        plain = model(inputs["x"], inputs["t"]).sample
        nhwc = model.to(memory_format=torch.channels_last)
        fast = nhwc(inputs["x"].contiguous(memory_format=torch.channels_last), inputs["t"]).sample
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("task", ["image", "sdm"])
def test_a_run_trains_in_the_layout_it_chose(tmp_path, cache, task, monkeypatch):
    data = write_tiny_dataset(tmp_path / "data")
    forced = {"contiguous": 1.0, "channels_last": 0.5}  # channels_last clearly faster
    monkeypatch.setattr(memory_format, "time_layouts", lambda *a, **k: dict(forced))
    seen = []
    real_step = __import__("pairforge.train.step", fromlist=["train_step"]).train_step

    def spy(state, *args, **kwargs):
        seen.append((state.channels_last, state.raw_model.conv_in.weight.is_contiguous(
            memory_format=torch.channels_last)))  # fmt: skip
        return real_step(state, *args, **kwargs)

    monkeypatch.setattr("pairforge.train.step.train_step", spy)
    config = tiny_config(data, f"task={task}", "optim.max_steps=2")
    assert config.channels_last == "auto"
    train(config, tmp_path / "run")
    assert seen == [(True, True), (True, True)]
    (entry,) = json.loads((cache / memory_format.CACHE_FILE).read_text()).values()
    assert entry["channels_last"] is True and entry["seconds"] == forced


CALLS = []


class _CountingNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x, t):
        CALLS.append(x.is_contiguous(memory_format=torch.channels_last))
        return type("Out", (), {"sample": self.conv(x)})


@pytest.mark.parametrize(("slow_step_s", "timed_rounds"), [(1e9, 3), (0.0, 1)])
def test_probe_rounds_shrink_for_slow_models(monkeypatch, slow_step_s, timed_rounds):
    monkeypatch.setattr(memory_format, "PROBE_SLOW_STEP_S", slow_step_s)
    CALLS.clear()
    seconds = memory_format.time_layouts(_CountingNet(), _inputs(), torch.device("cpu"), False)
    assert set(seconds) == {"contiguous", "channels_last"}
    # One warm-up round, then the timed ones; each round runs contiguous, then channels_last.
    assert CALLS == [False, True] * (1 + timed_rounds)


def test_the_probe_key_is_the_same_in_every_process():
    """diffusers' config holds a set-ordered private list (_use_default_values): the key must
    not depend on it, or every new process would measure again (and could pick another
    layout for a resumed run)."""
    import subprocess
    import sys

    code = (
        "import torch;"
        "from pairforge.models.factory import build_model;"
        "from pairforge.train.memory_format import probe_key;"
        "torch.set_num_threads(1);"
        "m = build_model('UNet2DModel', 'tiny', 2, 2, 16);"
        "print(probe_key(m, {'x': torch.zeros(4, 2, 16, 16)}, torch.device('cpu'), False))"
    )
    keys = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(2)
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        here = memory_format.probe_key(
            build_model("UNet2DModel", "tiny", 2, 2, 16),
            {"x": torch.zeros(4, 2, 16, 16)},
            torch.device("cpu"),
            False,
        )
    finally:
        torch.set_num_threads(threads)
    assert keys == {here}


def test_a_run_keeps_the_layout_it_started_with(tmp_path, cache, monkeypatch):
    model = build_model("UNet2DModel", "tiny", 2, 2, 16)
    run = tmp_path / "run"
    run.mkdir()
    cpu = torch.device("cpu")
    monkeypatch.setattr(memory_format, "time_layouts",
                        lambda *a, **k: {"contiguous": 1.0, "channels_last": 0.5})  # fmt: skip
    first = memory_format.choose_channels_last("auto", model, _inputs, cpu, False, run_dir=run)
    assert (first.channels_last, first.source) == (True, "probe")
    assert json.loads((run / memory_format.RUN_FILE).read_text())["channels_last"] is True
    # The machine's cache now says otherwise (measured again elsewhere): the run keeps its own.
    (entry,) = json.loads((cache / memory_format.CACHE_FILE).read_text()).items()
    (cache / memory_format.CACHE_FILE).write_text(
        json.dumps({entry[0]: {**entry[1], "channels_last": False}})
    )
    again = memory_format.choose_channels_last("auto", model, _inputs, cpu, False, run_dir=run)
    assert (again.channels_last, again.source) == (True, "run")
    assert "as when this run started" in again.describe()
    other = tmp_path / "other"
    other.mkdir()
    fresh = memory_format.choose_channels_last("auto", model, _inputs, cpu, False, run_dir=other)
    assert (fresh.channels_last, fresh.source) == (False, "cache")
    # An explicit setting wins over the record.
    forced = memory_format.choose_channels_last(False, model, _inputs, cpu, False, run_dir=run)
    assert (forced.channels_last, forced.source) == (False, "config")
