"""channels_last or not, decided per machine by measurement (`channels_last: auto`).

Whether NHWC ("channels_last") convolutions are faster depends on the device, the torch build,
the precision and the model: on recent GPUs with bf16 it usually wins, but the demo U-Net's
training step measured about 20 % slower in channels_last on a Xeon with AMX (bf16) and about
15 % slower on an AVX2 EPYC (fp32). So the presets say `channels_last: auto`: before the first
step, the run times forward + backward of its own model on one real training batch in both
layouts, interleaved, and keeps channels_last only where it is clearly faster (by
`MIN_GAIN`). The decision is cached per machine, torch version, thread count, model config,
batch shape and precision in PAIRFORGE_CACHE_DIR (default ~/.cache/pairforge), so the probe
(seconds) is paid once, and recorded in the run (RUN/memory-format.json), so a resumed run
keeps the layout it started with (and stays bit-identical to an uninterrupted one) whatever
the cache says.

The layout changes only how tensors are strided, not the math: results agree to rounding.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

CACHE_ENV = "PAIRFORGE_CACHE_DIR"
CACHE_FILE = "memory-format.json"
RUN_FILE = "memory-format.json"  # in the run folder: the layout the run started with
# channels_last must beat contiguous by this fraction of the step time to be chosen.
MIN_GAIN = 0.05
PROBE_REPEATS = 3
PROBE_MAX_BATCH = 16
# A model whose warm-up step takes longer than this is timed once per layout (a base U-Net at
# 128 px took 21 s per CPU step: three rounds would cost the run three minutes).
PROBE_SLOW_STEP_S = 2.0


def cache_dir() -> Path:
    """Where pairforge keeps per-machine caches: $PAIRFORGE_CACHE_DIR or ~/.cache/pairforge."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "pairforge"


def device_description(device: torch.device) -> str:
    """The device in words that identify its speed: GPU name, or CPU model and thread count."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    model = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{device.type}:{model}:{torch.get_num_threads()} threads"


@dataclass(frozen=True)
class LayoutChoice:
    """The layout a run trains in and why: source "config" (set explicitly), "probe" (measured
    now), "cache" (measured before on this machine) or "run" (the layout this run started
    with); seconds: median forward + backward time per layout ({} when set explicitly)."""

    channels_last: bool
    source: str
    seconds: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        layout = "channels_last" if self.channels_last else "contiguous (NCHW)"
        if self.source == "config":
            return f"memory format: {layout} (set in the config)"
        times = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in self.seconds.items())
        where = {
            "probe": "measured now",
            "cache": "measured earlier on this machine",
            "run": "as when this run started, measured",
        }[self.source]
        return f"memory format: {layout} (channels_last: auto, {where}: {times} per step)"


def decide(seconds: dict[str, float], min_gain: float = MIN_GAIN) -> bool:
    """True (channels_last) only if it is faster than contiguous by more than `min_gain`."""
    return seconds["channels_last"] < (1.0 - min_gain) * seconds["contiguous"]


def probe_key(model: torch.nn.Module, inputs: dict, device: torch.device, bf16: bool) -> str:
    """What the measured ratio depends on: device, torch, model config, input shapes, precision."""
    config = getattr(model, "config", None)
    # diffusers' private keys (e.g. _use_default_values, a set: its order varies by process)
    # say nothing about the network.
    public = {k: v for k, v in dict(config).items() if not k.startswith("_")} if config else None
    config_text = json.dumps(public if public is not None else repr(model), sort_keys=True,
                             default=str)  # fmt: skip
    shapes = {k: list(v.shape) for k, v in sorted(inputs.items()) if torch.is_tensor(v)}
    text = json.dumps(
        {
            "device": device_description(device),
            "torch": torch.__version__,
            "model": type(model).__name__,
            "config": hashlib.sha256(config_text.encode()).hexdigest()[:16],
            "inputs": shapes,
            "bf16": bool(bf16),
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def time_layouts(
    model: torch.nn.Module,
    inputs: dict,
    device: torch.device,
    bf16: bool,
    repeats: int = PROBE_REPEATS,
) -> dict[str, float]:
    """Median seconds of forward + backward of `model(**inputs)` in each layout, interleaved,
    after one warm-up each (`repeats` rounds, one when a warm-up step is slower than
    PROBE_SLOW_STEP_S). Works on copies: `model`, its gradients and the global RNG state are
    left as they were."""
    copies = {
        "contiguous": copy.deepcopy(model).to(memory_format=torch.contiguous_format),
        "channels_last": copy.deepcopy(model).to(memory_format=torch.channels_last),
    }
    layout_of = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    rng_devices = [device] if device.type == "cuda" else []

    def one_round(record: dict[str, list[float]]) -> None:
        for name, net in copies.items():
            x = inputs["x"].contiguous(memory_format=layout_of[name])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = net(x, inputs["t"], **inputs.get("condition", {})).sample
            out.float().square().mean().backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            record[name].append(time.perf_counter() - start)
            net.zero_grad(set_to_none=True)

    warm_up: dict[str, list[float]] = {name: [] for name in copies}
    seconds: dict[str, list[float]] = {name: [] for name in copies}
    with torch.random.fork_rng(devices=rng_devices):
        one_round(warm_up)  # allocators, kernel caches
        slow = max(v[0] for v in warm_up.values()) > PROBE_SLOW_STEP_S
        for _ in range(1 if slow else repeats):
            one_round(seconds)
    return {name: statistics.median(values) for name, values in seconds.items()}


def choose_channels_last(
    setting: bool | str,
    model: torch.nn.Module,
    make_inputs,
    device: torch.device,
    bf16: bool,
    *,
    use_cache: bool = True,
    run_dir: Path | None = None,
) -> LayoutChoice:
    """The layout to train in: `setting` True / False as given; "auto": the one recorded in
    `run_dir` (a resumed run), else measured (or cached), then recorded there.

    make_inputs: () -> {"x": x_t, "t": timesteps, "condition": {model kwargs}} on `device`, one
    real training batch (called only when a measurement is needed).
    """
    if setting is True or setting is False:
        return LayoutChoice(bool(setting), "config")
    recorded = _read_cache(run_dir / RUN_FILE) if run_dir is not None else {}
    if "channels_last" in recorded:
        return LayoutChoice(bool(recorded["channels_last"]), "run", dict(recorded["seconds"]))
    choice = _measured_choice(model, make_inputs, device, bf16, use_cache)
    if run_dir is not None:
        from pairforge import io

        try:
            io.atomic_write_json(
                run_dir / RUN_FILE,
                {"channels_last": choice.channels_last, "seconds": choice.seconds,
                 "device": device_description(device)},
            )  # fmt: skip
        except OSError as err:
            raise io.write_error(run_dir / RUN_FILE, "the run's memory layout", err) from err
    return choice


def _measured_choice(model, make_inputs, device, bf16, use_cache: bool) -> LayoutChoice:
    """channels_last by measurement, from the per-machine cache when it has this case."""
    inputs = make_inputs()
    key = probe_key(model, inputs, device, bf16)
    path = cache_dir() / CACHE_FILE
    cached = _read_cache(path).get(key) if use_cache else None
    if cached is not None:
        return LayoutChoice(bool(cached["channels_last"]), "cache", dict(cached["seconds"]))
    seconds = time_layouts(model, inputs, device, bf16)
    choice = LayoutChoice(decide(seconds), "probe", seconds)
    if use_cache:
        _write_cache(path, key, choice, device)
    return choice


def _read_cache(path: Path) -> dict:
    """The cache's entries; an unreadable or damaged cache counts as empty (it is re-measured)."""
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def _write_cache(path: Path, key: str, choice: LayoutChoice, device: torch.device) -> None:
    """Add one entry, written atomically (a temporary file renamed over the cache); a cache
    that cannot be written warns and only costs the next run its probe."""
    from pairforge import io

    entries = _read_cache(path)
    entries[key] = {
        "channels_last": choice.channels_last,
        "seconds": choice.seconds,
        "device": device_description(device),
        "torch": torch.__version__,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        io.atomic_write_json(path, entries)
    except OSError as err:
        warnings.warn(
            f"could not write the memory-layout cache {path} ({err}); the next run measures "
            f"again. Set {CACHE_ENV} to a writable folder to keep it.",
            stacklevel=2,
        )
