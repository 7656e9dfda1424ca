"""What the training loop writes as it goes: checkpoints, model/, preview grids and metrics.

`train.loop.train` stays one flat function whose body reads as its phases (DESIGN.md); the side
effects of those phases live here: `RunOutputs` (checkpoints, RUN/model, RUN/samples previews and
the divergence check that keeps NaN / Inf weights off the disk) and `TrainingLog` (the progress
bar, RUN/metrics.jsonl and tensorboard, over a window of steps).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pairforge.config import TrainConfig
from pairforge.core.tasks import Task, TaskLayout
from pairforge.errors import PairforgeError


def contiguous_copy(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model).to(memory_format=torch.contiguous_format)


@dataclass
class RunOutputs:
    """The files of one run that hold weights or samples, written by the main process.

    raw_model: the unwrapped model; ema: train.ema.EMA or None; spec / normalizer: the training
    data's (recorded in pairforge.json); preview_batch: {"image", "mask"} conditions of sdm / sr
    previews (None for unconditional tasks); last_saved: the newest checkpoint's step;
    label_budget: the data.budget.LabelBudget the run reads masks from (None: no budget);
    pseudo_labels: {"path", "head_sha256", "filled"} of a pseudo-labeled training set (whose
    budget is its head's) or None.
    """

    run_dir: Path
    config: TrainConfig
    accelerator: Any
    task: Task
    layout: TaskLayout
    spec: Any
    normalizer: Any
    scheduler_config: dict
    raw_model: torch.nn.Module
    ema: Any
    optimizer: torch.optim.Optimizer
    bf16: bool
    preview_batch: dict[str, torch.Tensor] | None
    last_saved: int = 0
    label_budget: Any = None
    pseudo_labels: dict | None = None

    @property
    def sampling_model(self) -> torch.nn.Module:
        """The weights that previews and model/ show: the EMA model when there is one."""
        return self.ema.model if self.ema else self.raw_model

    def record(self, step: int):
        """RUN/model/pairforge.json of the weights at `step`."""
        from pairforge.core.record import RunRecord

        config, layout = self.config, self.layout
        return RunRecord(
            task=self.task.name,
            model_class=self.task.model_class,
            channels=self.spec.channel_names,
            image_channels=layout.image_channels,
            num_classes=layout.num_classes,
            sample_channels=layout.sample_channels,
            codec=layout.codec.to_dict() if layout.codec else None,
            normalizer=self.normalizer.to_dict(),
            spec=self.spec.model_dump(mode="json"),
            resolution=config.data.resolution,
            crop_size=config.data.crop_size,
            prediction=config.diffusion.prediction,
            step=step,
            label_budget=None if self.label_budget is None else self.label_budget.to_dict(),
            reads_masks=self.task.needs_masks,
            **({} if self.pseudo_labels is None else {"pseudo_labels": self.pseudo_labels}),
            **self.task.record_settings(config),
        )

    def diverged(self, step: int, what: str) -> PairforgeError:
        """The error that stops a run whose loss, gradients or weights became NaN / Inf."""
        config = self.config
        kept = f"step {self.last_saved}" if self.last_saved else "none yet"
        precision = " or use precision=fp32" if self.bf16 else ""
        return PairforgeError(
            f"{self.run_dir}: training stopped at step {step}: {what}. The last finite checkpoint "
            f"({kept}) is kept; nothing non-finite was saved. Fix: lower optim.lr (now "
            f"{config.optim.lr:g}){precision}, and check {config.data.path} for NaN/Inf pixels "
            f"(`pairforge data check {config.data.path}`); then train into a new --out."
        )

    def check_finite(self, step: int, what: str) -> None:
        """Stop before a checkpoint or model/ could hold NaN / Inf weights."""
        from pairforge.train.checkpoint import non_finite_tensors

        ema_model = self.ema.model if self.ema else None
        for name, module in (("model", self.raw_model), ("EMA model", ema_model)):
            bad = non_finite_tensors(dict(module.state_dict())) if module is not None else []
            if bad:
                raise self.diverged(step, f"{len(bad)} {name} tensors hold NaN/Inf ({what})")

    def write_model(self, step: int) -> None:
        """RUN/model/: the slim inference weights (EMA if on) and their record."""
        from pairforge.train.run import write_inference_model

        model = self.ema.model if self.ema else contiguous_copy(self.raw_model)
        write_inference_model(self.run_dir, model, self.scheduler_config, self.record(step))

    def save_checkpoint(self, step: int, train_seconds: float) -> None:
        """checkpoints/step-<step>/ (full training state) and model/, after the finite check;
        every process calls it (the barriers keep them together)."""
        from pairforge.train.checkpoint import save_checkpoint

        self.check_finite(step, "before the checkpoint")
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            ema = self.ema
            save_checkpoint(
                self.run_dir,
                step,
                self.raw_model,
                ema.model if ema else None,
                self.optimizer,
                {"ema_updates": ema.num_updates if ema else 0, "train_seconds": train_seconds},
                keep=self.config.log.keep_checkpoints,
            )
            self.write_model(step)
        self.last_saved = step
        self.accelerator.wait_for_everyone()

    def save_preview(self, step: int) -> None:
        """samples/step-<step>.png: a grid of previews (train.preview.write_preview)."""
        from pairforge.core.run import SAMPLES_DIR
        from pairforge.train.preview import write_preview

        if self.accelerator.is_main_process:
            write_preview(
                self.run_dir / SAMPLES_DIR / f"step-{step:08d}.png",
                self.layout,
                self.sampling_model,
                self.scheduler_config,
                self.config,
                self.spec.class_colors,
                condition_batch=self.preview_batch,
                bf16=self.bf16,
            )
        self.accelerator.wait_for_everyone()

    def rebuild_model_if_stale(self, step: int) -> None:
        """A finished run ends with model/ equal to its last checkpoint: rebuild it when it is
        missing, stale or half-replaced (a kill during the final model write). Called only when
        the run trained nothing, so the weights in memory are the loaded checkpoint's."""
        from pairforge.train.run import model_is_current

        if not model_is_current(self.run_dir, step):
            self.check_finite(step, "in the last checkpoint")
            self.write_model(step)


class TrainingLog:
    """Progress bar, RUN/metrics.jsonl and tensorboard: the mean loss and the throughput over
    the steps since the last row (time spent saving excluded). With a label budget the bar
    first says it (LabelBudget.describe())."""

    def __init__(
        self,
        config: TrainConfig,
        run_dir: Path,
        accelerator,
        start_step: int,
        show: bool,
        bf16: bool,
        label_budget=None,
    ):
        from tqdm.auto import tqdm

        from pairforge.core.run import METRICS_FILE

        self.config, self.is_main = config, accelerator.is_main_process
        self.world = accelerator.num_processes
        self.metrics_path = run_dir / METRICS_FILE
        self.bar = tqdm(
            total=config.optim.max_steps, initial=start_step, disable=not (self.is_main and show),
            desc=f"train {config.task} {'bf16' if bf16 else 'fp32'}", unit="step",
            dynamic_ncols=True,
        )  # fmt: skip
        if label_budget is not None and self.is_main and show:
            self.bar.write(f"labels: {label_budget.describe()}")
        self.tensorboard = None
        if self.is_main and config.log.tensorboard:
            self.tensorboard = open_tensorboard(run_dir)
        self.window_loss: list[float] = []
        self.window_images = 0
        self.window_start = time.perf_counter()

    def step_done(self, loss: float) -> None:
        opt = self.config.optim
        self.window_loss.append(loss)
        self.window_images += opt.batch_size * opt.grad_accumulation * self.world
        self.bar.update(1)

    def write_row(self, step: int, lr: float, result, train_seconds: float, last_saved: int):
        """One metrics row (every process computes it; the main one writes it)."""
        from pairforge import io

        now = time.perf_counter()
        record = {
            "step": step,
            "loss": float(np.mean(self.window_loss)),
            "lr": lr,
            "grad_norm": float(result.grad_norm) if result.grad_norm is not None else None,
            "ema_decay": result.ema_decay,
            "images_per_s": self.window_images / max(now - self.window_start, 1e-9),
            "train_seconds": train_seconds,
            "processes": self.world,
        }
        postfix = {"loss": f"{record['loss']:.4f}", "img_s": f"{record['images_per_s']:.1f}"}
        max_minutes = self.config.optim.max_minutes
        if max_minutes is not None:  # the bar's ETA is for max_steps; show the budget too
            postfix["budget_left_min"] = f"{max(0.0, max_minutes - train_seconds / 60):.1f}"
        self.bar.set_postfix(postfix)
        if self.is_main:
            try:
                io.append_jsonl(self.metrics_path, record)
            except OSError as err:
                error = io.write_error(self.metrics_path, "training metrics", err)
                raise PairforgeError(
                    f"{error} Training stopped at step {step}; checkpoint step "
                    f"{last_saved} is kept (rerun the command to continue from it)."
                ) from None
            if self.tensorboard is not None:
                for key, value in record.items():
                    if key != "step" and isinstance(value, (int, float)):
                        self.tensorboard.add_scalar(f"train/{key}", value, step)
        self.window_loss, self.window_images, self.window_start = [], 0, now

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` (spent saving) out of the throughput."""
        self.window_start += seconds

    def close(self) -> None:
        self.bar.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def open_tensorboard(run_dir: Path):
    """A SummaryWriter on RUN/tensorboard when the tensorboard package is installed, else None."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run_dir / "tensorboard"))
