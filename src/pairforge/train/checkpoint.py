"""Full training-state checkpoints: written to a temporary folder, then renamed into place."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from pairforge.core.run import CHECKPOINT_DIR, STATE_FILE, list_checkpoints
from pairforge.errors import PairforgeError
from pairforge.io import fault_point, write_error

FORMAT_VERSION = 1


def plain_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors keyed exactly like the unwrapped model (no module./_orig_mod.)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    leaked = [k for k in state if k.startswith(("module.", "_orig_mod."))]
    if leaked:
        raise RuntimeError(f"wrapped model passed to plain_state_dict (keys like {leaked[0]!r})")
    return state


def non_finite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors in `state` holding NaN or +-Inf."""
    return [
        name
        for name, tensor in state.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


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

    Weights with NaN / Inf are never written (PairforgeError). A failed write (full disk, ...)
    removes the temporary folder and raises PairforgeError; older checkpoints are untouched.
    """
    from safetensors.torch import save_file

    root = Path(run_dir) / CHECKPOINT_DIR
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    weights = {"model.safetensors": plain_state_dict(model)}
    if ema_model is not None:
        weights["ema.safetensors"] = plain_state_dict(ema_model)
    for name, tensors in weights.items():
        bad = non_finite_tensors(tensors)
        if bad:
            raise PairforgeError(
                f"{final}: not written: {len(bad)} tensors of {name} hold NaN/Inf (e.g. {bad[0]}); "
                "the training diverged. Lower optim.lr, check the data for NaN/Inf pixels "
                "(`pairforge data check`), or use precision=fp32; earlier checkpoints are kept."
            )
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name, tensors in weights.items():
            save_file(tensors, tmp / name)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        rng = {"torch_cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            for index, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
                rng[f"torch_cuda_{index}"] = cuda_state
        save_file(rng, tmp / "rng.safetensors")
        fault_point("checkpoint")  # tests: die with the tensors on disk but no state.json
        full_state = {"format_version": FORMAT_VERSION, "step": step, **state}
        (tmp / STATE_FILE).write_text(json.dumps(full_state, indent=2))
        for file in tmp.iterdir():
            _fsync_file(file)  # the rename below must not publish files still in the page cache
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except (OSError, RuntimeError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = [s for s, _ in list_checkpoints(run_dir) if s != step]
        kept = (
            f"checkpoint step {previous[-1]} is kept (rerun the command to continue from it)"
            if previous
            else "there is no earlier checkpoint (a rerun starts from step 0)"
        )
        error = write_error(final, "checkpoint", err)
        raise PairforgeError(f"{error} Training stopped at step {step}; {kept}.") from None
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old[1], ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1][1] if checkpoints else None


class UnsafeFileError(PairforgeError):
    """A weight file holds pickled Python objects: refused, never unpickled."""


def load_tensors_only(path: Path) -> Any:
    """torch.load(path, weights_only=True), refusing pickled objects with a clear error.

    Tensors and plain containers load; a file naming any Python global (a class, a function:
    what an attacker's pickle needs) raises UnsafeFileError and nothing from it runs.
    Other damage (truncated, not a torch file) raises the original error.
    """
    import pickle

    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err) or "GLOBAL" in str(err):
            raise UnsafeFileError(
                f"{path}: holds pickled Python objects, not only tensors; refused to load it "
                "(loading could run code). Delete this checkpoint folder, or retrain; pairforge "
                "writes optimizer.pt with tensors and plain containers only."
            ) from None
        raise


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
    optimizer.load_state_dict(load_tensors_only(folder / "optimizer.pt"))
    rng = load_file(folder / "rng.safetensors")
    state = json.loads((folder / STATE_FILE).read_text())
    torch.set_rng_state(rng["torch_cpu"])
    if torch.cuda.is_available():
        cuda_keys = sorted(
            (k for k in rng if k.startswith("torch_cuda_")), key=lambda k: int(k[11:])
        )
        cuda_states = [rng[k] for k in cuda_keys]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    return state


def load_latest_checkpoint(
    run_dir: Path,
    model: torch.nn.Module,
    ema_model: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer,
) -> tuple[Path | None, dict[str, Any]]:
    """Restore the newest checkpoint that loads; (folder, state.json), or (None, {}) for none.

    A damaged newest checkpoint (truncated or corrupt file, e.g. a disk that filled up) is
    skipped with a warning and the one before it is used. A file with pickled objects is a
    hard error (UnsafeFileError), never skipped silently.
    """
    import pickle

    from safetensors import SafetensorError

    checkpoints = list_checkpoints(run_dir)
    for step, folder in reversed(checkpoints):
        try:
            return folder, load_checkpoint(folder, model, ema_model, optimizer)
        except UnsafeFileError:
            raise
        except (SafetensorError, pickle.UnpicklingError, RuntimeError, OSError, ValueError,
                KeyError, EOFError) as err:  # fmt: skip
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            warnings.warn(
                f"{folder}: checkpoint of step {step} cannot be read ({reason[:200]}); "
                "using the previous checkpoint instead",
                stacklevel=2,
            )
    if checkpoints:
        raise PairforgeError(
            f"{Path(run_dir) / CHECKPOINT_DIR}: none of the {len(checkpoints)} checkpoints can be "
            "read (see the warnings above); delete the damaged step-* folders to restart from "
            "scratch, or pass a new --out."
        )
    return None, {}
