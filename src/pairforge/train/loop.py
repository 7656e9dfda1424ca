"""The training loop: one flat function on accelerate, from config to run directory."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from pairforge.config import TrainConfig
from pairforge.core.seeds import dropout_seed, step_seed
from pairforge.errors import PairforgeError
from pairforge.precision import resolve_precision

# Keys that may change when an existing run is continued (everything else must match).
RESUMABLE_CHANGES = (
    "optim.max_steps",
    "optim.max_minutes",
    "log.",
    "data.num_workers",
    "data.path",
)


class StepBatchSampler(torch.utils.data.Sampler):
    """Item indices of every micro-batch from `start_step` on, for one process.

    Index of item j of micro-batch m at step s on rank r: ((s * M + m) * R + r) * B + j, so
    every item is a pure function of its position and resumed runs see the same crops.
    """

    def __init__(self, start_step, max_steps, accumulation, world_size, rank, batch_size):
        self.start_step, self.max_steps = start_step, max_steps
        self.accumulation, self.world_size = accumulation, world_size
        self.rank, self.batch_size = rank, batch_size

    def __len__(self) -> int:
        return (self.max_steps - self.start_step) * self.accumulation

    def __iter__(self):
        for step in range(self.start_step, self.max_steps):
            for micro in range(self.accumulation):
                first = (step * self.accumulation + micro) * self.world_size + self.rank
                first *= self.batch_size
                yield list(range(first, first + self.batch_size))


def _check_same_run(previous: dict, config: TrainConfig, run_dir: Path) -> None:
    import yaml

    def flat(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    before = dict(flat(previous))
    after = dict(flat(yaml.safe_load(config.to_yaml())))
    changed = [
        k
        for k in sorted(set(before) | set(after))
        if before.get(k) != after.get(k) and not k.startswith(RESUMABLE_CHANGES)
    ]
    if changed:
        key = changed[0]
        raise PairforgeError(
            f"{run_dir}: this run was started with {key}={before.get(key)!r}, now {key}="
            f"{after.get(key)!r}; a run resumes only with the same settings. Use another --out "
            "for a new run (changed: " + ", ".join(changed) + ")."
        )


def train(config: TrainConfig, run_dir: str | Path, progress: bool | None = None) -> Path:
    """Train `config` into `run_dir`, resuming from its last complete checkpoint; returns run_dir.

    Works in one process or under `accelerate launch` / `torchrun` (DDP; gloo on CPU). Each
    optimizer step is a pure function of (seed, step, process rank) and the state, so an
    interrupted run continues identically. Writes RUN/config.yaml, metrics.jsonl,
    samples/step-*.png, checkpoints/step-*/ and model/ (see docs/ARCHITECTURE.md).
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from pairforge.core.record import RunRecord
    from pairforge.core.run import METRICS_FILE, SAMPLES_DIR
    from pairforge.core.tasks import TrainingSettings, get_task
    from pairforge.diffusion.schedule import alphas_cumprod, make_scheduler_config
    from pairforge.io import (
        append_jsonl,
        write_error,
    )
    from pairforge.models.factory import build_model
    from pairforge.train.checkpoint import (
        load_latest_checkpoint,
        non_finite_tensors,
        save_checkpoint,
    )
    from pairforge.train.ema import EMA
    from pairforge.train.preview import write_preview
    from pairforge.train.run import model_is_current, write_inference_model
    from pairforge.train.step import NonFiniteStep, StepModel, train_step

    run_dir = Path(run_dir)
    opt, log = config.optim, config.log
    task = get_task(config.task)

    # Processes, devices and precision.
    # Launched as several processes without CUDA: accelerate needs cpu=True to pick gloo DDP.
    multi_process_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    # bf16 autocast is applied explicitly below, so accelerate's mixed precision stays off.
    accelerator = Accelerator(cpu=multi_process_cpu, mixed_precision="no")
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    is_main = accelerator.is_main_process
    bf16 = resolve_precision(config.precision, device.type) == "bf16"
    show_progress = log.progress if progress is None else progress

    # Run directory: the resolved config; an existing run must have the same settings.
    _prepare_run_dir(config, run_dir, accelerator)

    # Data: random crops; items indexed by (step, micro-batch, rank) for exact resumption.
    items_needed = opt.max_steps * opt.grad_accumulation * world * opt.batch_size
    ds, crops = _training_crops(config, task, items_needed)
    layout = task.make_layout(ds.num_channels, ds.num_classes, config.mask_codec)
    task_settings = TrainingSettings(
        config.sdm.cond_drop_prob, config.sr.noise_aug_max, config.sr.scale_factor
    )

    # Diffusion constants and the model.
    scheduler_config = make_scheduler_config(
        config.diffusion.schedule, config.diffusion.prediction, config.diffusion.num_train_timesteps
    )
    abar = alphas_cumprod(scheduler_config).to(device)
    torch.manual_seed(config.seed)  # identical initial weights in every process
    model = build_model(
        task.model_class,
        config.model.preset,
        in_channels=layout.sample_channels,
        out_channels=layout.sample_channels,
        sample_size=config.data.resolution,
        overrides=config.model.overrides(),
        **task.model_kwargs(layout),
    ).to(device)
    ema = (
        EMA(model, config.ema.decay, config.ema.power, config.ema.inv_gamma)
        if config.ema.enabled
        else None
    )
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = _adamw(model, opt.lr, opt.betas, opt.weight_decay)
    if config.compile:
        model.compile()  # in place: parameter names (and saved keys) stay unprefixed

    # Resume from the last complete checkpoint.
    # A damaged newest checkpoint is skipped with a warning (load_latest_checkpoint).
    start_step = 0
    checkpoint, state = load_latest_checkpoint(
        run_dir, model, ema.model if ema else None, optimizer
    )
    if checkpoint is not None:
        start_step = int(state["step"])
        if ema:
            ema.num_updates = int(state["ema_updates"])
    seconds_before = float(state.get("train_seconds", 0.0))
    metrics_path = run_dir / METRICS_FILE
    if is_main and metrics_path.is_file():
        _trim_metrics(metrics_path, start_step)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)
    step_model = StepModel(
        model=model,
        raw_model=raw_model,
        optimizer=optimizer,
        ema=ema,
        accelerator=accelerator,
        task=task,
        layout=layout,
        task_settings=task_settings,
        abar=abar,
        prediction=config.diffusion.prediction,
        min_snr_gamma=config.diffusion.min_snr_gamma,
        grad_clip=opt.grad_clip,
        bf16=bf16,
        channels_last=config.channels_last,
    )

    loader = torch.utils.data.DataLoader(
        crops,
        batch_sampler=StepBatchSampler(
            start_step, opt.max_steps, opt.grad_accumulation, world, rank, opt.batch_size
        ),
        num_workers=config.data.num_workers,
    )
    batches = iter(loader)
    preview_batch = None
    if not task.unconditional and is_main:
        items = [crops[items_needed + i] for i in range(log.num_samples)]
        preview_batch = {k: torch.stack([item[k] for item in items]) for k in ("image", "mask")}

    def inference_info(step: int) -> RunRecord:
        return RunRecord(
            task=task.name,
            model_class=task.model_class,
            channels=ds.spec.channel_names,
            image_channels=layout.image_channels,
            num_classes=layout.num_classes,
            sample_channels=layout.sample_channels,
            codec=layout.codec.to_dict() if layout.codec else None,
            normalizer=crops.normalizer.to_dict(),
            spec=ds.spec.model_dump(mode="json"),
            resolution=config.data.resolution,
            crop_size=config.data.crop_size,
            prediction=config.diffusion.prediction,
            step=step,
            **task.record_settings(config),
        )

    def check_finite(step: int, what: str) -> None:
        """Stop before a checkpoint or model/ could hold NaN / Inf weights."""
        for name, module in (("model", raw_model), ("EMA model", ema.model if ema else None)):
            bad = non_finite_tensors(dict(module.state_dict())) if module is not None else []
            if bad:
                raise diverged(step, f"{len(bad)} {name} tensors hold NaN/Inf ({what})")

    def diverged(step: int, what: str) -> PairforgeError:
        kept = f"step {last_saved}" if last_saved else "none yet"
        precision = " or use precision=fp32" if bf16 else ""
        return PairforgeError(
            f"{run_dir}: training stopped at step {step}: {what}. The last finite checkpoint "
            f"({kept}) is kept; nothing non-finite was saved. Fix: lower optim.lr (now "
            f"{opt.lr:g}){precision}, and check {config.data.path} for NaN/Inf pixels "
            f"(`pairforge data check {config.data.path}`); then train into a new --out."
        )

    def save_everything(step: int, train_seconds: float) -> None:
        nonlocal last_saved
        check_finite(step, "before the checkpoint")
        accelerator.wait_for_everyone()
        if is_main:
            save_checkpoint(
                run_dir,
                step,
                raw_model,
                ema.model if ema else None,
                optimizer,
                {"ema_updates": ema.num_updates if ema else 0, "train_seconds": train_seconds},
                keep=log.keep_checkpoints,
            )
            inference_model = ema.model if ema else _contiguous_copy(raw_model)
            write_inference_model(run_dir, inference_model, scheduler_config, inference_info(step))
        last_saved = step
        accelerator.wait_for_everyone()

    def save_preview(step: int) -> None:
        if is_main:
            write_preview(
                run_dir / SAMPLES_DIR / f"step-{step:08d}.png",
                layout,
                ema.model if ema else raw_model,
                scheduler_config,
                config,
                ds.spec.class_colors,
                condition_batch=preview_batch,
                bf16=bf16,
            )
        accelerator.wait_for_everyone()

    # Training.
    model.train()
    bar = tqdm(
        total=opt.max_steps, initial=start_step, disable=not (is_main and show_progress),
        desc=f"train {config.task} {'bf16' if bf16 else 'fp32'}", unit="step", dynamic_ncols=True,
    )  # fmt: skip
    started = time.perf_counter()
    tensorboard = _open_tensorboard(run_dir) if is_main and log.tensorboard else None
    window_loss, window_images, window_start = [], 0, time.perf_counter()
    step = start_step
    last_saved = start_step
    # optim.max_minutes bounds the run's total training time, like max_steps bounds its steps,
    # so continuing a finished run (e.g. rerunning the demo) trains no further.
    budget_s = None if opt.max_minutes is None else 60 * opt.max_minutes
    already_spent = budget_s is not None and seconds_before >= budget_s
    while step < opt.max_steps and not already_spent:
        # One optimizer step (train.step.train_step): forward and backward over the
        # micro-batches, clipping, optimizer, EMA; a non-finite loss or gradient stops the run.
        lr = opt.lr * min(1.0, (step + 1) / opt.warmup_steps) if opt.warmup_steps else opt.lr
        micro_batches = [next(batches) for _ in range(opt.grad_accumulation)]
        seeds = [
            (
                step_seed(config.seed, step, micro, rank),
                dropout_seed(config.seed, step, micro, rank),
            )
            for micro in range(opt.grad_accumulation)
        ]
        try:
            result = train_step(step_model, micro_batches, seeds, lr)
        except NonFiniteStep as err:
            raise diverged(step + 1, str(err)) from None
        mean_loss, grad_norm, ema_decay = result.loss, result.grad_norm, result.ema_decay
        step += 1

        # Metrics: mean loss over processes, throughput, progress bar.
        window_loss.append(mean_loss)
        window_images += opt.batch_size * opt.grad_accumulation * world
        elapsed = time.perf_counter() - started
        bar.update(1)
        if step % log.every == 0 or step == opt.max_steps:
            now = time.perf_counter()
            record = {
                "step": step,
                "loss": float(np.mean(window_loss)),
                "lr": lr,
                "grad_norm": float(grad_norm) if grad_norm is not None else None,
                "ema_decay": ema_decay,
                "images_per_s": window_images / max(now - window_start, 1e-9),
                "train_seconds": seconds_before + elapsed,
                "processes": world,
            }
            postfix = {"loss": f"{record['loss']:.4f}", "img_s": f"{record['images_per_s']:.1f}"}
            if opt.max_minutes is not None:  # the bar's ETA is for max_steps; show the budget too
                left = opt.max_minutes - (seconds_before + elapsed) / 60
                postfix["budget_left_min"] = f"{max(0.0, left):.1f}"
            bar.set_postfix(postfix)
            if is_main:
                try:
                    append_jsonl(metrics_path, record)
                except OSError as err:
                    error = write_error(metrics_path, "training metrics", err)
                    raise PairforgeError(
                        f"{error} Training stopped at step {step}; checkpoint step "
                        f"{last_saved} is kept (rerun the command to continue from it)."
                    ) from None
                if tensorboard is not None:
                    for key, value in record.items():
                        if key != "step" and isinstance(value, (int, float)):
                            tensorboard.add_scalar(f"train/{key}", value, step)
            window_loss, window_images, window_start = [], 0, now

        # Sample grids and checkpoints; stop early when the time budget is spent.
        saving_started = time.perf_counter()
        out_of_time = budget_s is not None and seconds_before + elapsed >= budget_s
        out_of_time = bool(accelerator.reduce(torch.tensor(float(out_of_time), device=device)))
        finished = step == opt.max_steps or out_of_time
        if (log.sample_every and step % log.sample_every == 0) or finished:
            save_preview(step)
        if (log.checkpoint_every and step % log.checkpoint_every == 0) or finished:
            save_everything(step, seconds_before + elapsed)
        window_start += time.perf_counter() - saving_started  # throughput excludes saving
        if out_of_time:
            break
    bar.close()
    if tensorboard is not None:
        tensorboard.close()
    # A finished run ends with model/ equal to its last checkpoint: rebuild it when it is
    # missing, stale or half-replaced (a kill during the final model write). Only happens when
    # this call trained nothing, so the weights in memory are the loaded checkpoint's.
    if is_main and checkpoint is not None and step == start_step:
        if not model_is_current(run_dir, step):
            check_finite(step, "in the last checkpoint")
            inference_model = ema.model if ema else _contiguous_copy(raw_model)
            write_inference_model(run_dir, inference_model, scheduler_config, inference_info(step))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return run_dir


def _contiguous_copy(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model).to(memory_format=torch.contiguous_format)


def _open_tensorboard(run_dir: Path):
    """A SummaryWriter on RUN/tensorboard when the tensorboard package is installed, else None."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run_dir / "tensorboard"))


def _adamw(model: torch.nn.Module, lr: float, betas, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with the fused kernel where this torch build has one for the device (CPU, CUDA)."""
    try:
        return torch.optim.AdamW(
            model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay, fused=True
        )
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)


def _prepare_run_dir(config: TrainConfig, run_dir: Path, accelerator) -> None:
    """Check an existing RUN/config.yaml against `config`, remove temporary files of killed
    writes and write the resolved config (atomically: a kill leaves the old or the new file)."""
    from pairforge.core.run import CONFIG_FILE, read_run_config
    from pairforge.io import atomic_write_text, ensure_writable_dir, iter_tmp_files, write_error

    is_main = accelerator.is_main_process
    config_path = run_dir / CONFIG_FILE
    ensure_writable_dir(run_dir, "run folder")
    previous = read_run_config(run_dir)
    if previous is not None:
        _check_same_run(previous[0], config, run_dir)
    accelerator.wait_for_everyone()
    if is_main:
        for stray in iter_tmp_files(run_dir):  # left by a process killed mid-write
            stray.unlink(missing_ok=True)
    if is_main and (previous is None or previous[1] != config.to_yaml()):
        try:
            atomic_write_text(config_path, config.to_yaml())
        except OSError as err:
            raise write_error(config_path, "run config", err) from None


def _training_crops(config: TrainConfig, task, items_needed: int):
    """(dataset, RandomCropDataset) of the training split: labeled samples only when the task
    needs masks; items_needed training items plus log.num_samples preview conditions."""
    from pairforge.data.dataset import load_dataset
    from pairforge.data.views import RandomCropDataset

    ds = load_dataset(config.data.path)
    ids = ds.ids(config.data.split)
    if task.needs_masks:
        if ds.num_classes < 2:
            raise PairforgeError(
                f"task={config.task!r} needs mask classes but {config.data.path} declares "
                f"{ds.num_classes}; use task=image or a labeled dataset."
            )
        ids = [i for i in ids if ds.has_mask(i)]
    if not ids:
        raise PairforgeError(
            f"data.split={config.data.split!r} of {config.data.path} has no "
            f"{'labeled ' if task.needs_masks else ''}samples; "
            f"available splits: {sorted(ds.spec.splits)}."
        )
    crops = RandomCropDataset(
        ds,
        ids,
        crop_size=config.data.crop_size,
        resolution=config.data.resolution,
        augment=config.data.augment,
        length=items_needed + config.log.num_samples,  # the last ones are preview conditions
        require_mask=task.needs_masks,
        seed=config.seed,
    )
    return ds, crops


def _trim_metrics(metrics_path: Path, start_step: int) -> None:
    """Drop metrics logged after the checkpoint we resume from (they will be logged again) and
    a torn last line; an atomic rewrite, so a kill here loses no history."""
    from pairforge.io import read_jsonl, write_error, write_jsonl

    text = metrics_path.read_bytes()
    rows = read_jsonl(metrics_path)
    kept = [row for row in rows if row["step"] <= start_step]
    if len(kept) < len(rows) or (text and not text.endswith(b"\n")):
        try:
            write_jsonl(metrics_path, kept)
        except OSError as err:
            raise write_error(metrics_path, "training metrics", err) from None
