"""The training loop: one flat function on accelerate, from config to run directory."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

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
    "channels_last",  # speed settings: the layout and compilation change no math
    "compile",
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

    after = dict(flat(yaml.safe_load(config.to_yaml())))
    # A key the run's config.yaml lacks (written before the key existed) had its default.
    before = {k: _default_of(k) for k in after} | dict(flat(previous))
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


def _default_of(key: str):
    """The default value of a dotted TrainConfig key, in its YAML form (None if unknown)."""
    from pydantic import BaseModel

    model, value = TrainConfig, None
    for part in key.split("."):
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return None
        value = field.default
        model = value.__class__ if isinstance(value, BaseModel) else None
    return list(value) if isinstance(value, tuple) else value


def train(config: TrainConfig, run_dir: str | Path, progress: bool | None = None) -> Path:
    """Train `config` into `run_dir`, resuming from its last complete checkpoint; returns run_dir.

    Works in one process or under `accelerate launch` / `torchrun` (DDP; gloo on CPU). Each
    optimizer step is a pure function of (seed, step, process rank) and the state, so an
    interrupted run continues identically. Writes RUN/config.yaml, metrics.jsonl,
    samples/step-*.png, checkpoints/step-*/ and model/ (see docs/ARCHITECTURE.md).

    One flat function over 80 lines on purpose (DESIGN.md: a flat training loop with phase
    comments, as in nanoGPT / EDM): the phases read top to bottom; what they write (checkpoints,
    model/, previews, metrics, the divergence check) lives in train.run_outputs, the step itself
    in train.step.
    """
    from accelerate import Accelerator

    from pairforge.core.tasks import TrainingSettings, get_task
    from pairforge.diffusion.schedule import alphas_cumprod, make_scheduler_config
    from pairforge.train.labels import check_same_budget, pseudo_labels_of
    from pairforge.train.run_outputs import RunOutputs, TrainingLog
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

    # Data: random crops; items indexed by (step, micro-batch, rank) for exact resumption.
    # Read before the run folder is written, so bad data or a bad label budget (data.labels)
    # leaves no config.yaml that a corrected rerun would have to match.
    items_needed = opt.max_steps * opt.grad_accumulation * world * opt.batch_size
    pseudo = pseudo_labels_of(config, task)  # a `seg pseudolabel` set: its head's budget
    ds, crops = _training_crops(config, task, items_needed)
    budget = getattr(ds, "budget", None) if pseudo is None else pseudo.budget

    # Run directory: the resolved config; an existing run must have the same settings (and,
    # with data.labels, the same label budget).
    _prepare_run_dir(config, run_dir, accelerator)
    check_same_budget(run_dir, budget)
    layout = task.make_layout(ds.num_channels, ds.num_classes, config.mask_codec)
    task_settings = TrainingSettings(
        config.sdm.cond_drop_prob, config.sr.noise_aug_max, config.sr.scale_factor
    )

    # Diffusion constants and the model.
    scheduler_config = make_scheduler_config(
        config.diffusion.schedule, config.diffusion.prediction, config.diffusion.num_train_timesteps
    )
    abar = alphas_cumprod(scheduler_config).to(device)

    def probe_inputs(model):  # one real batch, for timing the layouts (channels_last: auto)
        return _probe_inputs(model, task, layout, task_settings, crops, abar, opt.batch_size)

    model, ema, optimizer, memory_layout = _build_model(
        config, task, layout, device, bf16, probe_inputs, accelerator, run_dir
    )
    if is_main and (log.progress if progress is None else progress):
        print(memory_layout.describe(), file=sys.stderr)

    # Resume from the last complete checkpoint.
    checkpoint, start_step, seconds_before = _resume(run_dir, model, ema, optimizer, is_main)
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
        channels_last=memory_layout.channels_last,
    )
    loader = torch.utils.data.DataLoader(
        crops,
        batch_sampler=StepBatchSampler(
            start_step, opt.max_steps, opt.grad_accumulation, world, rank, opt.batch_size
        ),
        num_workers=config.data.num_workers,
    )
    batches = iter(loader)

    # What the run writes: checkpoints, model/, previews (sdm / sr: of held-out conditions).
    preview_batch = None
    if not task.unconditional and is_main:
        items = [crops[items_needed + i] for i in range(log.num_samples)]
        preview_batch = {k: torch.stack([item[k] for item in items]) for k in ("image", "mask")}
    outputs = RunOutputs(
        run_dir, config, accelerator, task, layout, ds.spec, crops.normalizer, scheduler_config,
        raw_model, ema, optimizer, bf16, preview_batch, last_saved=start_step,
        label_budget=budget, pseudo_labels=None if pseudo is None else pseudo.info,
    )  # fmt: skip

    # Training.
    model.train()
    show_progress = log.progress if progress is None else progress
    metrics = TrainingLog(config, run_dir, accelerator, start_step, show_progress, bf16, budget)
    started = time.perf_counter()
    step = start_step
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
            raise outputs.diverged(step + 1, str(err)) from None
        step += 1

        # Metrics: mean loss over processes, throughput, progress bar.
        # The last step (max_steps, or the time budget spent) always gets a metrics row.
        elapsed = time.perf_counter() - started
        out_of_time = budget_s is not None and seconds_before + elapsed >= budget_s
        out_of_time = bool(accelerator.reduce(torch.tensor(float(out_of_time), device=device)))
        finished = step == opt.max_steps or out_of_time
        metrics.step_done(result.loss)
        if step % log.every == 0 or finished:
            metrics.write_row(step, lr, result, seconds_before + elapsed, outputs.last_saved)

        # Sample grids and checkpoints; stop early when the time budget is spent.
        saving_started = time.perf_counter()
        if (log.sample_every and step % log.sample_every == 0) or finished:
            outputs.save_preview(step)
        if (log.checkpoint_every and step % log.checkpoint_every == 0) or finished:
            outputs.save_checkpoint(step, seconds_before + elapsed)
        metrics.exclude(time.perf_counter() - saving_started)  # throughput excludes saving
        if out_of_time:
            break
    metrics.close()

    # A resumed run that trained nothing: make sure model/ equals its last checkpoint.
    if is_main and checkpoint is not None and step == start_step:
        outputs.rebuild_model_if_stale(step)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return run_dir


def _build_model(
    config: TrainConfig, task, layout, device, bf16: bool, probe_inputs, accelerator, run_dir
):
    """(model on `device`, EMA or None, AdamW, train.memory_format.LayoutChoice) with identical
    initial weights and the same layout in every process."""
    from pairforge.models.factory import build_model
    from pairforge.train.ema import EMA
    from pairforge.train.memory_format import choose_channels_last

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
    # channels_last: auto is measured by the main process (cached per machine, recorded in the
    # run so that a resumed run keeps its layout) and shared.
    choice = None
    if accelerator.is_main_process:
        choice = choose_channels_last(
            config.channels_last, model, lambda: probe_inputs(model), device, bf16,
            run_dir=run_dir,
        )  # fmt: skip
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        choice = broadcast_object_list([choice])[0]
    if choice.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = config.optim
    optimizer = _adamw(model, opt.lr, opt.betas, opt.weight_decay)
    if config.compile:
        _use_compile_cache()
        model.compile()  # in place: parameter names (and saved keys) stay unprefixed
    return model, ema, optimizer, choice


def _probe_inputs(model, task, layout, task_settings, crops, abar, batch_size: int) -> dict:
    """{"x", "t", "condition"}: x_t of the first training items as train_step builds it (at
    most PROBE_MAX_BATCH of them), for timing memory layouts; reads crops, draws nothing from
    the global RNG."""
    from pairforge.diffusion.objectives import q_sample
    from pairforge.train.memory_format import PROBE_MAX_BATCH

    items = [crops[i] for i in range(min(batch_size, PROBE_MAX_BATCH, len(crops)))]
    batch = {k: torch.stack([item[k] for item in items]) for k in items[0]}
    generator = torch.Generator().manual_seed(0)
    settings = task_settings.for_model(model)
    x0, condition = task.training_inputs(layout, batch, generator, settings)
    t = torch.randint(0, len(abar), (x0.shape[0],), generator=generator)
    eps = torch.randn(x0.shape, generator=generator)
    device = abar.device
    x_t = q_sample(x0.to(device), eps.to(device), t.to(device), abar).float()
    return {
        "x": x_t,
        "t": t.to(device),
        "condition": {k: v.to(device) for k, v in condition.items()},
    }


def _use_compile_cache() -> None:
    """Keep torch.compile's artifacts (inductor's FX graph and kernel caches) in pairforge's
    per-machine cache folder unless TORCHINDUCTOR_CACHE_DIR says otherwise, so compilation
    (minutes on a CPU) is paid once per machine and torch version, not once per run."""
    from pairforge.train.memory_format import cache_dir

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "inductor"))


def _resume(run_dir: Path, model, ema, optimizer, is_main: bool):
    """Load the last complete checkpoint (a damaged newest one is skipped with a warning) and
    trim metrics logged after it; (checkpoint folder or None, start step, train seconds)."""
    from pairforge.core.run import METRICS_FILE
    from pairforge.train.checkpoint import load_latest_checkpoint

    checkpoint, state = load_latest_checkpoint(
        run_dir, model, ema.model if ema else None, optimizer
    )
    start_step = 0
    if checkpoint is not None:
        start_step = int(state["step"])
        if ema:
            ema.num_updates = int(state["ema_updates"])
    metrics_path = run_dir / METRICS_FILE
    if is_main and metrics_path.is_file():
        _trim_metrics(metrics_path, start_step)
    return checkpoint, start_step, float(state.get("train_seconds", 0.0))


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
    """(data, RandomCropDataset) of the training split: labeled samples only when the task
    needs masks; items_needed training items plus log.num_samples preview conditions.

    With data.labels (tasks that read masks only) the data is the `BudgetedDataset` view of
    the label budget drawn on data.split: crops (and preview conditions) lie inside its tiles,
    so the run reads no mask pixel outside them; `data.budget` is then the LabelBudget.
    """
    from pairforge.data.dataset import load_dataset
    from pairforge.data.views import RandomCropDataset
    from pairforge.train.labels import training_budget

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
    budget = training_budget(config, task, ds)  # None without data.labels
    if budget is not None:
        from pairforge.data.budget_view import BudgetedDataset

        ds, ids = BudgetedDataset(ds, budget), budget.ids
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
