"""Benchmark: pairforge training step and sampler vs a plain diffusers loop, interleaved in one run.

Training (images/s, same UNet2DModel config, same batch of data, no data loading in either):
  baseline  plain diffusers loop: fp32, AdamW, DDPMScheduler.add_noise, MSE on eps
  pairforge pairforge.train.step.train_step (the loop's step): q_sample, v-prediction with min-SNR weights,
            grad clipping and EMA update, with bf16 autocast + channels_last (and once in fp32,
            to show what the options buy)
Sampling (seconds/image, same weights, same initial noise per seed):
  baseline  diffusers DDIMPipeline, fp32, 50 steps
  pairforge pairforge.diffusion.sampling.sample, DPM-Solver++ 2M, 20 and 25 steps, bf16 autocast
Quality (only with --run, a trained model): both samplers integrate the same probability-flow
ODE from the same noise, so each is compared with a near-exact solution of it (DDIM with all
1000 timesteps, fp32) by RMS distance in model units [-1, 1]; lower is closer.

Example (2 CPU cores, busy machine -> one thread):
  OMP_NUM_THREADS=1 python bench/bench_train_sample.py --run runs/demo-image --rounds 3
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import statistics
import time

import torch
import torch.nn.functional as F


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default=None, help="trained run (weights + quality proxy)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--train-steps", type=int, default=4, help="timed steps per round")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sample-n", type=int, default=8, help="images per sampling call")
    parser.add_argument("--quality-n", type=int, default=8, help="images for the quality proxy")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument(
        "--compile", action="store_true",
        help="also time pairforge's auto variant under torch.compile (the first step's time is "
        "the compilation: minutes on a CPU the first time, seconds once TORCHINDUCTOR_CACHE_DIR "
        "holds the artifacts; run the script twice to see both)",
    )  # fmt: skip
    parser.add_argument(
        "--all", action="store_true",
        help="time pairforge's bf16 variants even where bf16 is emulated (slow)",
    )  # fmt: skip
    parser.add_argument("--skip-sampling", action="store_true", help="time training only")
    parser.add_argument("--json", default=None, help="write the results here")
    return parser.parse_args()


def make_model(run_dir):
    """(UNet2DModel, DDPMScheduler config, resolution, channels) from a run or the demo preset."""
    from pairforge.diffusion.schedule import make_scheduler_config
    from pairforge.models.factory import build_model

    if run_dir:
        from pairforge.core.run import load_run

        run = load_run(run_dir)
        return run.model, run.scheduler_config, run.resolution, run.sample_shape[0]
    overrides = {"block_out_channels": (32, 64, 128), "attention_levels": (False, False, True)}
    model = build_model("UNet2DModel", "small", 2, 2, 32, overrides=overrides)
    return model, make_scheduler_config("cosine", "v"), 32, 2


def baseline_train_step(model, optimizer, scheduler, x0, bf16=False, channels_last=False):
    """The plain diffusers recipe (examples/unconditional_image_generation): AdamW,
    DDPMScheduler.add_noise, MSE on eps; bf16 = the forward under bf16 autocast, which is what
    accelerate's mixed_precision="bf16" does."""
    noise = torch.randn_like(x0)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],))
    noisy = scheduler.add_noise(x0, noise, t)
    if channels_last:
        noisy = noisy.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        prediction = model(noisy, t).sample
    loss = F.mse_loss(prediction.float(), noise)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def pairforge_step_model(model, optimizer, ema, abar, prediction, bf16, channels_last, accelerator):
    """The training loop's step state (pairforge.train.step.StepModel) for an image model."""
    from pairforge.core.tasks import TrainingSettings, get_task
    from pairforge.train.step import StepModel

    task = get_task("image")
    return StepModel(
        model=model,
        raw_model=model,
        optimizer=optimizer,
        ema=ema,
        accelerator=accelerator,
        task=task,
        layout=task.make_layout(model.config.in_channels, 0, "auto"),
        task_settings=TrainingSettings(),
        abar=abar,
        prediction=prediction,
        min_snr_gamma=5.0,
        grad_clip=1.0,
        bf16=bf16,
        channels_last=channels_last,
    )


def pairforge_train_step(state, x0, seed):
    """pairforge.train.step.train_step, the loop's own step, on one micro-batch."""
    from pairforge.train.step import train_step

    return train_step(state, [{"image": x0}], [(seed, seed + 1)], lr=1e-4).loss


# (name, bf16, channels_last) of the plain diffusers loop and of pairforge's step.
DIFFUSERS_VARIANTS = [
    ("diffusers fp32", False, False),
    ("diffusers bf16 autocast", True, False),
    ("diffusers bf16 + channels_last", True, True),
]
PAIRFORGE_VARIANTS = [
    ("pairforge fp32", False, False),
    ("pairforge fp32 + channels_last", False, True),
    ("pairforge bf16", True, False),
    ("pairforge bf16 + channels_last", True, True),
]


def auto_choice(model, x0, abar):
    """What `precision: auto` and `channels_last: auto` pick for this model on this machine
    (the loop's own decision, measured here without the cache): (bf16, channels_last, seconds)."""
    from pairforge.precision import resolve_precision
    from pairforge.train.memory_format import PROBE_MAX_BATCH, choose_channels_last

    bf16 = resolve_precision("auto", "cpu") == "bf16"
    x = x0[:PROBE_MAX_BATCH]
    t = torch.randint(0, len(abar), (x.shape[0],), generator=torch.Generator().manual_seed(0))
    choice = choose_channels_last(
        "auto", model, lambda: {"x": x, "t": t}, torch.device("cpu"), bf16, use_cache=False
    )
    return bf16, choice.channels_last, choice.seconds


def bench_training(args, model, scheduler_config, resolution, channels):
    """images/s of each variant, interleaved round by round; variants whose bf16 is emulated
    on this CPU are skipped for pairforge unless --all (the diffusers bf16 loop is always
    timed: it is the anchor the issue names)."""
    from accelerate import Accelerator
    from diffusers import DDPMScheduler, UNet2DModel

    from pairforge.diffusion.schedule import alphas_cumprod, prediction_of
    from pairforge.precision import native_bf16
    from pairforge.train.ema import EMA

    x0 = torch.tanh(torch.randn(args.batch_size, channels, resolution, resolution))
    abar = alphas_cumprod(scheduler_config)
    prediction = prediction_of(scheduler_config)
    base = UNet2DModel.from_config(model.config)
    base.load_state_dict(model.state_dict())
    base.train()
    auto_bf16, auto_cl, probe_seconds = auto_choice(base, x0, abar)
    auto_name = f"pairforge {'bf16' if auto_bf16 else 'fp32'}" + (
        " + channels_last" if auto_cl else ""
    )
    keep_bf16 = args.all or native_bf16("cpu")
    variants = {}
    ddpm = DDPMScheduler.from_config(scheduler_config)
    for name, bf16, channels_last in DIFFUSERS_VARIANTS:
        if bf16 and channels_last and not keep_bf16:
            continue
        m = copy.deepcopy(base)
        if channels_last:
            m = m.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
        variants[name] = lambda m=m, opt=opt, bf16=bf16, cl=channels_last: baseline_train_step(
            m, opt, ddpm, x0, bf16, cl
        )
    accelerator = Accelerator(cpu=True)
    for name, bf16, channels_last in PAIRFORGE_VARIANTS:
        if bf16 and not keep_bf16:
            continue
        m = copy.deepcopy(base)
        ema = EMA(m, 0.999)
        if channels_last:
            m = m.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True)  # as pairforge's loop
        state = pairforge_step_model(
            m, opt, ema, abar, prediction, bf16, channels_last, accelerator
        )
        calls = itertools.count()
        variants[name] = lambda state=state, calls=calls: pairforge_train_step(
            state, x0, next(calls)
        )
    compile_seconds = None
    if args.compile:
        m = copy.deepcopy(base)
        ema = EMA(m, 0.999)
        if auto_cl:
            m = m.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True)
        m.compile()
        state = pairforge_step_model(m, opt, ema, abar, prediction, auto_bf16, auto_cl, accelerator)
        calls = itertools.count()
        start = time.perf_counter()
        pairforge_train_step(state, x0, next(calls))  # compiles (or loads the cached artifacts)
        compile_seconds = time.perf_counter() - start
        variants[auto_name + " + compile"] = lambda state=state, calls=calls: pairforge_train_step(
            state, x0, next(calls)
        )
    for step in variants.values():  # warm-up (allocator, oneDNN primitive caches)
        step()
    rates = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, step in variants.items():
            start = time.perf_counter()
            for _ in range(args.train_steps):
                step()
            rates[name].append(args.batch_size * args.train_steps / (time.perf_counter() - start))
    extra = {
        "auto_choice": auto_name,
        "probe_seconds": probe_seconds,
        "compile_first_step_seconds": compile_seconds,
    }
    return {name: statistics.median(r) for name, r in rates.items()}, rates, extra


def bench_sampling(args, model, scheduler_config, resolution, channels):
    from diffusers import DDIMPipeline, DDIMScheduler

    from pairforge.diffusion.sampling import model_denoiser, sample
    from pairforge.precision import native_bf16

    model = model.eval()
    dtype = torch.bfloat16 if native_bf16("cpu") else torch.float32  # precision: auto
    tag = "bf16" if dtype == torch.bfloat16 else "fp32"
    seeds = list(range(args.sample_n))
    pipe = DDIMPipeline(unet=model, scheduler=DDIMScheduler.from_config(scheduler_config))
    pipe.set_progress_bar_config(disable=True)

    def baseline():
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        with torch.no_grad():
            return pipe(
                batch_size=len(seeds), generator=generators, eta=0.0, num_inference_steps=50,
                output_type="np",
            ).images  # fmt: skip

    def ours(steps):
        return sample(
            model_denoiser(model), (channels, resolution, resolution), seeds,
            "dpm++", steps, scheduler_config, dtype=dtype, progress=False,
        )  # fmt: skip

    variants = {
        "baseline DDIMPipeline fp32 50 steps": baseline,
        f"pairforge dpm++ {tag} 20 steps": lambda: ours(20),
        f"pairforge dpm++ {tag} 25 steps": lambda: ours(25),
    }
    for run in variants.values():
        run()
    seconds = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            seconds[name].append((time.perf_counter() - start) / len(seeds))
    return {name: statistics.median(s) for name, s in seconds.items()}, seconds


def quality_proxy(args, model, scheduler_config, resolution, channels):
    """RMS distance (model units) of each sampler's output to a 1000-step DDIM ODE solution."""
    from diffusers import DDIMPipeline, DDIMScheduler

    from pairforge.diffusion.sampling import model_denoiser, sample

    model = model.eval()
    seeds = list(range(1000, 1000 + args.quality_n))
    shape = (channels, resolution, resolution)
    denoise = model_denoiser(model)
    reference = sample(denoise, shape, seeds, "ddim", 1000, scheduler_config, progress=False)
    pipe = DDIMPipeline(unet=model, scheduler=DDIMScheduler.from_config(scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        ddim_pipe = pipe(
            batch_size=len(seeds),
            generator=[torch.Generator().manual_seed(s) for s in seeds],
            eta=0.0,
            num_inference_steps=50,
            output_type="np",
        ).images  # fmt: skip  (clamped to [0, 1], HWC)
    ddim_pipe = torch.from_numpy(ddim_pipe).permute(0, 3, 1, 2) * 2 - 1
    from pairforge.precision import native_bf16

    candidates = {"baseline DDIMPipeline fp32 50 steps": ddim_pipe}
    settings = [("dpm++", 20, torch.float32), ("dpm++", 25, torch.float32)]
    if native_bf16("cpu"):  # emulated bf16 elsewhere: precision auto would not pick it
        settings += [("dpm++", 20, torch.bfloat16), ("dpm++", 25, torch.bfloat16)]
    for sampler, steps, dtype in [*settings, ("ddim", 20, torch.float32)]:
        x = sample(
            model_denoiser(model), shape, seeds, sampler, steps, scheduler_config,
            dtype=dtype, progress=False,
        )  # fmt: skip
        label = f"pairforge {sampler} {'bf16' if dtype == torch.bfloat16 else 'fp32'} {steps} steps"
        candidates[label] = x
    clamped_ref = reference.clamp(-1, 1)
    return {
        name: (x.clamp(-1, 1) - clamped_ref).pow(2).mean().sqrt().item()
        for name, x in candidates.items()
    } | {"reference std (scale)": clamped_ref.std().item()}


def main() -> None:
    from pairforge.precision import native_bf16

    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, scheduler_config, resolution, channels = make_model(args.run)
    print(
        f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
        f"{channels} x {resolution} x {resolution}, torch threads {torch.get_num_threads()}, "
        f"batch {args.batch_size}, {args.rounds} interleaved rounds"
    )
    train_rates, train_raw, auto = bench_training(
        args, model, scheduler_config, resolution, channels
    )
    anchor = "diffusers bf16 autocast"
    fastest_plain = max((n for n in train_rates if n.startswith("diffusers")), key=train_rates.get)
    print(
        f"\ntraining (images/s, median of rounds); ratios to the {anchor} loop and to the "
        f"fastest plain diffusers loop here ({fastest_plain})"
    )
    for name, rate in train_rates.items():
        mark = "   <- what the presets pick here (auto)" if name == auto["auto_choice"] else ""
        print(
            f"  {name:40s} {rate:8.1f}   x{rate / train_rates[anchor]:.2f}"
            f"   x{rate / train_rates[fastest_plain]:.2f}{mark}"
        )
    probe = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in auto["probe_seconds"].items())
    print(f"  channels_last probe (forward + backward): {probe}")
    if auto["compile_first_step_seconds"] is not None:
        print(f"  first compiled step: {auto['compile_first_step_seconds']:.1f} s")
    results = {
        "threads": torch.get_num_threads(),
        "cpu_native_bf16": native_bf16("cpu"),
        "train_images_per_s": train_rates,
        "train_rounds": train_raw,
        "train_anchor": anchor,
        "train_fastest_plain": fastest_plain,
        **auto,
    }
    if not args.skip_sampling:
        sample_seconds, sample_raw = bench_sampling(
            args, model, scheduler_config, resolution, channels
        )
        base_seconds = sample_seconds["baseline DDIMPipeline fp32 50 steps"]
        print("\nsampling (seconds/image, median of rounds)")
        for name, seconds in sample_seconds.items():
            print(f"  {name:40s} {seconds:8.4f}   speed-up x{base_seconds / seconds:.2f}")
        results |= {"sample_seconds_per_image": sample_seconds, "sample_rounds": sample_raw}
    if args.run and not args.skip_sampling:
        quality = quality_proxy(args, model, scheduler_config, resolution, channels)
        print(
            f"\nquality proxy: RMS distance to a 1000-step DDIM ODE solution ({args.quality_n} seeds)"
        )
        for name, value in quality.items():
            print(f"  {name:40s} {value:8.4f}")
        results["quality_rms_to_ode_reference"] = quality
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
