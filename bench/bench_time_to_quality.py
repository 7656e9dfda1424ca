"""Time to quality: pairforge's demo-image recipe vs the plain diffusers recipe, by CPU minutes.

Two image DDPMs of the same U-Net (the demo-image preset's) on the same training crops (the
demo-image data pipeline: 128 px crops of the built-in grains at 32 px, flips and rotations):

  diffusers  the recipe of diffusers' examples/unconditional_image_generation, as a user would
             run it: eps prediction, the linear beta schedule of DDPMScheduler, AdamW (lr 1e-4,
             betas 0.95 / 0.999, weight decay 1e-6), 500 warm-up steps then cosine decay, EMA
             (EMAModel, inv_gamma 1, power 3/4, max decay 0.9999), batch 16, fp32 (the faster
             precision on a CPU without native bf16; bf16 autocast where it is native), for
             `--minutes`; sampled with DDIMPipeline, 50 steps.
  pairforge  `pairforge train demo-image` (v prediction, cosine schedule, min-SNR 5, lr 5e-4,
             EMA 0.999, precision and memory layout auto) for `--minutes x --ratio`; sampled
             with pairforge's DPM-Solver++ 2M, 25 steps.

Quality: FID per channel (Inception, the `pairforge eval fid` settings) of `--samples` samples
of each model against the real train tiles at the same scale, same seeds for both. And the
ODE-distance proxy of each model's sampler (RMS to its own 1000-step DDIM solution from the
same noise, `--quality-n` seeds). That one measures solver error, not the model.

Each arm trains in its own child process, one after the other, with the same thread count.
Runs are kept in `--work`, so a rerun only evaluates.

  python bench/bench_time_to_quality.py --data /tmp/grains --work /tmp/ttq --minutes 12 \
      --json bench/results/bench_time_to_quality.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DIFFUSERS_LR, DIFFUSERS_WARMUP, BATCH = 1e-4, 500, 16


def demo_config(data: Path, minutes: float | None):
    from pairforge.config import load_config

    overrides = [f"data.path={data}"]
    if minutes is not None:
        overrides.append(f"optim.max_minutes={minutes}")
    return load_config("demo-image", overrides)


def train_diffusers(data: Path, out: Path, minutes: float, seed: int = 0) -> dict:
    """The plain diffusers recipe for `minutes` of training; saves out/unet, out/scheduler."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    from pairforge.core.tasks import get_task
    from pairforge.models.factory import build_model
    from pairforge.precision import resolve_precision
    from pairforge.train.loop import _training_crops

    config = demo_config(data, None)
    torch.manual_seed(seed)
    m = config.model
    model = build_model("UNet2DModel", m.preset, 2, 2, config.data.resolution,
                        overrides=m.overrides())  # fmt: skip
    _, crops = _training_crops(config, get_task("image"), 10**7)
    scheduler = DDPMScheduler(num_train_timesteps=1000)  # linear betas, eps: the defaults
    optimizer = torch.optim.AdamW(model.parameters(), lr=DIFFUSERS_LR, betas=(0.95, 0.999),
                                  weight_decay=1e-6, eps=1e-8)  # fmt: skip
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0,
                   power=0.75, model_cls=type(model), model_config=model.config)  # fmt: skip
    bf16 = resolve_precision("auto", "cpu") == "bf16"
    budget, spent, step, total = 60 * minutes, 0.0, 0, None
    generator = torch.Generator().manual_seed(seed)
    losses = []
    while spent < budget:
        start = time.perf_counter()
        batch = torch.stack([crops[step * BATCH + i]["image"] for i in range(BATCH)])
        if total is None and step == 20:  # steps the budget allows, for the cosine decay
            total = int(step * budget / spent)
        progress = 0.0 if total is None else min(1.0, (step - DIFFUSERS_WARMUP) / max(
            total - DIFFUSERS_WARMUP, 1))  # fmt: skip
        lr = DIFFUSERS_LR * (
            step / DIFFUSERS_WARMUP
            if step < DIFFUSERS_WARMUP
            else 0.5 * (1 + math.cos(math.pi * progress))
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        noise = torch.randn(batch.shape, generator=generator)
        t = torch.randint(0, 1000, (BATCH,), generator=generator)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            prediction = model(scheduler.add_noise(batch, noise, t), t).sample
        loss = F.mse_loss(prediction.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(model.parameters())
        losses.append(loss.item())
        step += 1
        spent += time.perf_counter() - start  # data loading included, as in pairforge's loop
    ema.copy_to(model.parameters())
    model.save_pretrained(out / "unet")
    scheduler.save_pretrained(out / "scheduler")
    record = {"steps": step, "train_seconds": spent, "bf16": bf16,
              "loss_first_50": float(np.mean(losses[:50])), "loss_last_50": float(np.mean(losses[-50:]))}  # fmt: skip
    (out / "train.json").write_text(json.dumps(record, indent=1))
    return record


def train_both(args) -> dict:
    """Each arm in its own child process (same threads); a finished arm is not retrained."""
    records = {}
    diffusers_dir = args.work / "diffusers"
    if not (diffusers_dir / "train.json").exists():
        subprocess.run([sys.executable, __file__, "--train-diffusers-only", "--data", str(args.data),
                        "--work", str(args.work), "--minutes", str(args.minutes)], check=True)  # fmt: skip
    records["diffusers"] = json.loads((diffusers_dir / "train.json").read_text())
    run = args.work / "pairforge"
    subprocess.run([sys.executable, "-m", "pairforge.cli", "train", "demo-image", "--out", str(run),
                    "--set", f"data.path={args.data}",
                    "--set", f"optim.max_minutes={args.minutes * args.ratio}"], check=True)  # fmt: skip
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    records["pairforge"] = {"steps": rows[-1]["step"], "train_seconds": rows[-1]["train_seconds"],
                            "loss_last": rows[-1]["loss"]}  # fmt: skip
    return records


def samplers(args):
    """{arm: (sample(seeds) -> model units (N, C, H, W), reference(seeds) -> the same noise's
    1000-step DDIM solution)}."""
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

    from pairforge.core.run import load_run
    from pairforge.diffusion.sampling import model_denoiser, sample

    run = load_run(args.work / "pairforge")
    shape = run.sample_shape
    denoise = model_denoiser(run.model.eval())

    def ours(seeds, steps=25, sampler="dpm++"):
        return sample(denoise, shape, seeds, sampler, steps, run.scheduler_config, progress=False)

    unet = UNet2DModel.from_pretrained(args.work / "diffusers" / "unet").eval()
    ddim = DDIMScheduler.from_pretrained(args.work / "diffusers" / "scheduler")
    pipe = DDIMPipeline(unet=unet, scheduler=ddim)
    pipe.set_progress_bar_config(disable=True)

    def theirs(seeds, steps=50):
        out = []
        for first in range(0, len(seeds), 50):
            chunk = seeds[first : first + 50]
            with torch.no_grad():
                images = pipe(batch_size=len(chunk), num_inference_steps=steps, eta=0.0,
                              generator=[torch.Generator().manual_seed(s) for s in chunk],
                              output_type="np").images  # fmt: skip
            out.append(torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1)
        return torch.cat(out)

    exact = args.reference_steps
    return {
        "diffusers": (theirs, lambda seeds: theirs(seeds, exact)),
        "pairforge": (ours, lambda seeds: ours(seeds, exact, "ddim")),
    }, run


def evaluate(args) -> dict:
    from pairforge.eval.fid import evaluate_fid
    from pairforge.eval.inception import InceptionFeatureExtractor
    from pairforge.eval.sets import EvalSet, load_eval_set

    arms, run = samplers(args)
    real = load_eval_set(args.data, split="train", normalizer=run.normalizer,
                         crop_size=run.crop_size, resolution=run.resolution)  # fmt: skip
    seeds = list(range(args.samples))
    quality_seeds = list(range(10_000, 10_000 + args.quality_n))
    inception = InceptionFeatureExtractor()
    result = {}
    for name, (draw, reference) in arms.items():
        start = time.perf_counter()
        x = draw(seeds).clamp(-1, 1)
        seconds = time.perf_counter() - start
        fake = EvalSet(source=name, images=x.numpy().astype(np.float32), masks=None,
                       labeled=np.zeros(0, dtype=np.int64), normalizer=real.normalizer,
                       channel_names=real.channel_names, class_names=real.class_names,
                       class_colors=real.class_colors)  # fmt: skip
        fid = evaluate_fid(real, fake, extractor=inception, cache_dir=args.work / "fid-cache",
                           kid_subset_size=min(100, args.samples))  # fmt: skip
        rows = {row["target"]: row["fid"] for row in fid["rows"]}
        exact = reference(quality_seeds).clamp(-1, 1)
        fast = draw(quality_seeds).clamp(-1, 1)
        result[name] = {
            "fid": rows,
            "sample_seconds_per_image": seconds / len(seeds),
            "ode_rms": float((fast - exact).pow(2).mean().sqrt()),
            "n_real": fid["rows"][0]["n_real"],
            "n_fake": fid["rows"][0]["n_fake"],
        }
        print(f"{name}: FID {rows}, ODE RMS {result[name]['ode_rms']:.4f}", flush=True)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="built-in grains (demo preset)")
    parser.add_argument("--work", type=Path, required=True, help="both runs are kept here")
    parser.add_argument("--minutes", type=float, default=12.0, help="diffusers recipe budget")
    parser.add_argument("--ratio", type=float, default=0.5, help="pairforge budget / diffusers")
    parser.add_argument("--samples", type=int, default=500, help="samples per model for FID")
    parser.add_argument("--quality-n", type=int, default=8, help="seeds of the ODE proxy")
    parser.add_argument("--reference-steps", type=int, default=1000,
                        help="DDIM steps of the ODE proxy's near-exact solution")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--train-diffusers-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.train_diffusers_only:
        (args.work / "diffusers").mkdir(parents=True, exist_ok=True)
        return train_diffusers(args.data, args.work / "diffusers", args.minutes)
    args.work.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"{torch.get_num_threads()} threads",
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "training": train_both(args),
    }
    result["quality"] = evaluate(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
