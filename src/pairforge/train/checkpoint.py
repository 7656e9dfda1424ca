"""Full training-state checkpoints: written to a temporary folder, then renamed into place."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "state.json"
FORMAT_VERSION = 1


def plain_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors keyed exactly like the unwrapped model (no module./_orig_mod.)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    leaked = [k for k in state if k.startswith(("module.", "_orig_mod."))]
    if leaked:
        raise RuntimeError(f"wrapped model passed to plain_state_dict (keys like {leaked[0]!r})")
    return state


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    ema_model: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write RUN/checkpoints/step-XXXXXXXX/ atomically and keep only the newest `keep` ones.

    Files: model.safetensors, ema.safetensors (if EMA), optimizer.pt (tensors and plain
    containers only, loaded with weights_only=True), rng.safetensors (torch CPU / CUDA RNG
    states), state.json (step and counters; written last: its presence marks a complete
    checkpoint even if the rename was interrupted on an exotic filesystem).
    """
    from safetensors.torch import save_file

    root = Path(run_dir) / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(plain_state_dict(model), tmp / "model.safetensors")
    if ema_model is not None:
        save_file(plain_state_dict(ema_model), tmp / "ema.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"torch_cuda_{index}"] = cuda_state
    save_file(rng, tmp / "rng.safetensors")
    full_state = {"format_version": FORMAT_VERSION, "step": step, **state}
    (tmp / STATE_FILE).write_text(json.dumps(full_state, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old[1], ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints as (step, folder), oldest first; the step is read from state.json."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        state_file = folder / STATE_FILE
        if folder.name.startswith(".") or not state_file.is_file():
            continue  # a temporary or interrupted write
        try:
            step = int(json.loads(state_file.read_text())["step"])
        except (ValueError, KeyError, json.JSONDecodeError):
            continue
        found.append((step, folder))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1][1] if checkpoints else None


def load_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    ema_model: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer,
) -> dict[str, Any]:
    """Restore weights (strictly), optimizer and RNG states in place; returns state.json."""
    from safetensors.torch import load_file

    folder = Path(folder)
    model.load_state_dict(load_file(folder / "model.safetensors"))
    if ema_model is not None:
        ema_model.load_state_dict(load_file(folder / "ema.safetensors"))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    rng = load_file(folder / "rng.safetensors")
    torch.set_rng_state(rng["torch_cpu"])
    if torch.cuda.is_available():
        cuda_keys = sorted(
            (k for k in rng if k.startswith("torch_cuda_")), key=lambda k: int(k[11:])
        )
        cuda_states = [rng[k] for k in cuda_keys]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    return json.loads((folder / STATE_FILE).read_text())
