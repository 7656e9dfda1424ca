"""Samplers: per-sample seeds independent of batch size, accuracy against an exact Gaussian-data
oracle, scheduler settings, guidance."""

import functools
import math

import pytest
import torch

from pairforge.diffusion.guidance import classifier_free, classifier_free_batched
from pairforge.diffusion.objectives import eps_from_v, q_sample, v_from_eps
from pairforge.diffusion.sampling import (
    LAMBDA_MIN_CLIPPED,
    make_sampling_scheduler,
    model_denoiser,
    sample,
    seeded_noise,
)
from pairforge.diffusion.schedule import alphas_cumprod, make_scheduler_config
from pairforge.errors import PairforgeError
from pairforge.models.factory import build_model

pytestmark = pytest.mark.usefixtures("single_thread_module")


@pytest.fixture(scope="module")
def tiny_unet():
    torch.manual_seed(0)
    return build_model("UNet2DModel", "tiny", 2, 2, 8).eval()


@pytest.mark.parametrize(
    "sampler,steps,prediction",
    [("ddpm", 8, "eps"), ("ddim", 6, "v"), ("dpm++", 6, "eps"), ("dpm++", 5, "v")],
)
def test_same_seed_same_sample_across_batch_sizes(tiny_unet, sampler, steps, prediction):
    config = make_scheduler_config("cosine", prediction)
    kwargs = dict(sampler=sampler, steps=steps, scheduler_config=config, progress=False)
    denoise = model_denoiser(tiny_unet)
    alone = sample(denoise, (2, 8, 8), seeds=[7], **kwargs)
    batched = sample(denoise, (2, 8, 8), seeds=[3, 7, 11], **kwargs)
    assert alone.shape == (1, 2, 8, 8) and batched.shape == (3, 2, 8, 8)
    assert alone.dtype == torch.float32
    torch.testing.assert_close(batched[1:2], alone, rtol=1e-4, atol=1e-4)
    # Different seeds give different samples.
    assert (batched[0] - batched[1]).abs().max() > 1e-2
    # Deterministic: repeating the call repeats the sample exactly.
    assert torch.equal(sample(denoise, (2, 8, 8), seeds=[7], **kwargs), alone)


def test_ddpm_ancestral_noise_comes_from_the_seed():
    """With a zero denoiser the DDPM sample is a function of its seed only: two seeds differ
    even though the initial noise is rescaled away, so ancestral noise must be seeded per sample."""
    config = make_scheduler_config("linear", "eps")
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    kwargs = dict(sampler="ddpm", steps=10, scheduler_config=config, progress=False)
    a = sample(zero, (1, 4, 4), seeds=[1, 2], **kwargs)
    b = sample(zero, (1, 4, 4), seeds=[2], **kwargs)
    torch.testing.assert_close(a[1:], b)
    assert not torch.allclose(a[0], a[1])


def test_bf16_sampling_close_to_fp32(tiny_unet):
    config = make_scheduler_config("linear", "eps")
    kwargs = dict(sampler="dpm++", steps=5, scheduler_config=config, progress=False)
    denoise = model_denoiser(tiny_unet, channels_last=True)
    fp32 = sample(denoise, (2, 8, 8), seeds=[0, 1], **kwargs)
    bf16 = sample(denoise, (2, 8, 8), seeds=[0, 1], dtype=torch.bfloat16, **kwargs)
    assert bf16.dtype == torch.float32
    assert (bf16 - fp32).abs().mean() < 0.1 * fp32.abs().mean()


def test_classifier_free_guidance_formula():
    cond = lambda x, t: x + 1.0  # noqa: E731
    uncond = lambda x, t: x * 0.0  # noqa: E731
    x, t = torch.ones(2, 1, 2, 2), torch.zeros(2, dtype=torch.long)
    assert torch.equal(classifier_free(cond, uncond, 0.0)(x, t), uncond(x, t))
    assert torch.equal(classifier_free(cond, uncond, 1.0)(x, t), cond(x, t))
    # eps = eps_u + s (eps_c - eps_u) = 0 + 1.5 * 2
    torch.testing.assert_close(classifier_free(cond, uncond, 1.5)(x, t), torch.full_like(x, 3.0))


def test_classifier_free_batched_is_one_pass_and_matches():
    calls = []

    def model_fn(x, t, condition):
        calls.append(x.shape[0])
        return x * condition.mean(dim=(1, 2, 3), keepdim=True) + t.view(-1, 1, 1, 1)

    condition, null = torch.ones(3, 2, 4, 4), torch.zeros(3, 2, 4, 4)
    x, t = torch.randn(3, 1, 4, 4), torch.tensor([5, 6, 7])
    guided = classifier_free_batched(model_fn, condition, null, 2.0)(x, t)
    assert calls == [6]
    expected = classifier_free(
        lambda a, b: model_fn(a, b, condition), lambda a, b: model_fn(a, b, null), 2.0
    )(x, t)
    torch.testing.assert_close(guided, expected)
    calls.clear()
    classifier_free_batched(model_fn, condition, null, 0.0)(x, t)
    assert calls == [3]


def test_sample_argument_errors(tiny_unet):
    config = make_scheduler_config("linear", "eps")
    denoise = model_denoiser(tiny_unet)
    with pytest.raises(PairforgeError, match="'euler'"):
        sample(denoise, (2, 8, 8), [0], "euler", 5, config, progress=False)
    with pytest.raises(PairforgeError, match="steps=0"):
        sample(denoise, (2, 8, 8), [0], "ddim", 0, config, progress=False)
    with pytest.raises(PairforgeError, match="scheduler_config"):
        sample(denoise, (2, 8, 8), [0], "ddim", 5, None, progress=False)


# --- Exact oracle for Gaussian data ------------------------------------------------------------
# Data x0 ~ N(0, S^2) per pixel. x_t = sqrt(abar) x0 + sqrt(1 - abar) eps is Gaussian with variance
# V = abar S^2 + 1 - abar, so the posterior means are linear in x_t:
#   E[eps | x_t] = sqrt(1 - abar) x_t / V,   E[x0 | x_t] = sqrt(abar) S^2 x_t / V,
#   E[v | x_t]   = sqrt(abar) E[eps | x_t] - sqrt(1 - abar) E[x0 | x_t]
#                = sqrt(abar (1 - abar)) (1 - S^2) x_t / V.
# The probability-flow ODE is then linear too: it carries N(0, V_t0) to N(0, S^2) (abar = 1), so
# a sample started at x_t0 = z must end exactly at z * S / sqrt(V_t0). Any error in spacing, step
# order, the start or the last step shows up as a deviation from that map.
S = 0.5
SEEDS = list(range(16))
SHAPE = (1, 32, 32)  # 16 x 1024 = 16384 pixels: std of a sample std ~ 1 / sqrt(2 N) = 0.55 %


def gaussian_oracle(scheduler_config, gain: float = 1.0):
    """denoise_fn returning gain * E[eps | x_t] or gain * E[v | x_t] (per the config's
    prediction_type) for x0 ~ N(0, S^2); gain 1.01 plays a model that is 1 % off."""
    abar_table = alphas_cumprod(scheduler_config)
    v_prediction = scheduler_config["prediction_type"] == "v_prediction"

    def denoise(x_t, t):
        abar = abar_table[t].view(-1, 1, 1, 1)
        var = abar * S**2 + 1 - abar
        if v_prediction:
            coefficient = (abar * (1 - abar)).sqrt() * (1 - S**2) / var
        else:
            coefficient = (1 - abar).sqrt() / var
        return (gain * coefficient * x_t.double()).to(x_t.dtype)

    return denoise


@functools.cache
def oracle_samples(schedule: str, prediction: str, sampler: str, steps: int, gain: float = 1.0):
    config = make_scheduler_config(schedule, prediction)
    denoise = gaussian_oracle(config, gain)
    return sample(denoise, SHAPE, SEEDS, sampler, steps, config, progress=False).double()


def exact_flow_map(schedule: str, sampler: str, steps: int) -> torch.Tensor:
    """Where the exact probability-flow ODE takes the sampler's initial noise (same seeds)."""
    config = make_scheduler_config(schedule, "eps")
    t0 = int(make_sampling_scheduler(sampler, config, steps).timesteps[0])
    abar = alphas_cumprod(config)[t0]
    noise = seeded_noise(SHAPE, [torch.Generator().manual_seed(s) for s in SEEDS]).double()
    return noise * S / (abar * S**2 + 1 - abar).sqrt()


def test_gaussian_oracle_is_the_posterior_mean():
    """The oracle's residual is uncorrelated with x_t (the defining property of E[. | x_t] for
    jointly Gaussian variables), and its eps and v agree through eps_from_v."""
    generator = torch.Generator().manual_seed(0)
    n = 400_000
    x0 = S * torch.randn(n, 1, 1, 1, generator=generator, dtype=torch.float64)
    eps = torch.randn(n, 1, 1, 1, generator=generator, dtype=torch.float64)
    for schedule in ("linear", "cosine"):
        abar = alphas_cumprod(make_scheduler_config(schedule))
        eps_oracle = gaussian_oracle(make_scheduler_config(schedule, "eps"))
        v_oracle = gaussian_oracle(make_scheduler_config(schedule, "v"))
        for step in (10, 300, 700, 990):
            t = torch.full((n,), step)
            x_t = q_sample(x0, eps, t, abar)
            scale = x_t.pow(2).mean().sqrt()
            for target, oracle in ((eps, eps_oracle), (v_from_eps(x0, eps, t, abar), v_oracle)):
                residual = target - oracle(x_t, t)
                assert abs((residual * x_t).mean() / scale) < 5 / math.sqrt(n)
            torch.testing.assert_close(
                eps_from_v(x_t, v_oracle(x_t, t), t, abar), eps_oracle(x_t, t), rtol=0, atol=1e-12
            )


# Measured with the oracle above (16 seeds of 1 x 32 x 32, S = 0.5); the same for eps and v,
# since both solvers step on the x0 prediction. DDIM is first order (error ~ 1 / steps), the
# linear schedule's large last log-SNR steps cost dpm++ more than the cosine one.
#  (schedule, sampler, steps): (RMS deviation from the exact flow map / S, sample std / S - 1)
ODE_ACCURACY = {
    ("cosine", "ddim", 50): (0.0305, -0.0318),
    ("cosine", "ddim", 25): (0.0601, -0.0614),
    ("cosine", "dpm++", 25): (0.0034, +0.0021),
    ("linear", "ddim", 50): (0.0571, -0.0584),
    ("linear", "ddim", 25): (0.1111, -0.1124),
    ("linear", "dpm++", 25): (0.0220, -0.0233),
}


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("schedule,sampler,steps", list(ODE_ACCURACY))
def test_ode_samplers_follow_the_exact_flow_map(schedule, sampler, steps, prediction):
    """Per sample: distance to the exact ODE map pinned at its measured value (rel. 10 %, so a
    worse grid or a lower order fails, and so does an unannounced improvement: update the
    docstring of make_sampling_scheduler). In distribution: N(0, S^2) up to that error."""
    x = oracle_samples(schedule, prediction, sampler, steps)
    flow_error, std_error = ODE_ACCURACY[schedule, sampler, steps]
    deviation = ((x - exact_flow_map(schedule, sampler, steps)).pow(2).mean().sqrt() / S).item()
    assert deviation == pytest.approx(flow_error, rel=0.1, abs=2e-4)
    assert (x.std() / S - 1).item() == pytest.approx(std_error, abs=2e-3)
    assert abs(x.mean().item()) < 3 * S / math.sqrt(x.numel())


# (schedule, steps): sample std / S - 1, measured. The closed-form variance of this ancestral
# chain (fixed_small variance misses the posterior's Var[x0 | x_t] term) predicts -0.40 % / -0.78 %
# at 1000 steps and -3.5 % / -6.3 % at 100 steps (cosine / linear); the rest is the 0.55 %
# sampling noise of 16384 pixels.
DDPM_STD_ERROR = {
    ("cosine", "eps", 1000): -0.0036,
    ("cosine", "v", 1000): -0.0036,
    ("linear", "eps", 1000): -0.0070,
    ("linear", "v", 1000): -0.0070,
    ("cosine", "eps", 100): -0.0258,
    ("linear", "eps", 100): -0.0539,
}


@pytest.mark.parametrize("schedule,prediction,steps", list(DDPM_STD_ERROR))
def test_ddpm_ends_in_the_data_distribution(schedule, prediction, steps):
    x = oracle_samples(schedule, prediction, "ddpm", steps)
    assert (x.std() / S - 1).item() == pytest.approx(
        DDPM_STD_ERROR[schedule, prediction, steps], abs=2e-3
    )
    assert abs(x.mean().item()) < 3 * S / math.sqrt(x.numel())
    # Stochastic: far from the deterministic flow map (a DDIM in disguise would be close).
    assert ((x - exact_flow_map(schedule, "ddpm", steps)).pow(2).mean().sqrt() / S) > 1.0


# (schedule, prediction, sampler, steps): RMS change of the samples / S when the model output is
# 1 % too large, measured. Before the log-SNR clip DDIM started at t = 999 on the cosine schedule,
# where an eps-model's x0 prediction divides by sqrt(abar) = 4.9e-5: 5.87 (50 steps) and 11.4
# (25 steps). v-prediction's x0 = sqrt(abar) x_t - sqrt(1 - abar) v never divides.
ONE_PERCENT_SENSITIVITY = {
    ("cosine", "eps", "ddim", 50): 0.0889,
    ("cosine", "eps", "ddim", 25): 0.1270,
    ("cosine", "eps", "dpm++", 25): 0.1195,
    ("cosine", "eps", "ddpm", 1000): 0.0139,
    ("linear", "eps", "ddim", 50): 0.0568,
    ("linear", "eps", "dpm++", 25): 0.0535,
    ("linear", "eps", "ddpm", 1000): 0.0139,
    ("cosine", "v", "ddim", 50): 0.0068,
    ("cosine", "v", "dpm++", 25): 0.0068,
    ("cosine", "v", "ddpm", 1000): 0.0066,
    ("linear", "v", "ddim", 50): 0.0068,
}


@pytest.mark.parametrize("schedule,prediction,sampler,steps", list(ONE_PERCENT_SENSITIVITY))
def test_one_percent_model_error_moves_samples_little(schedule, prediction, sampler, steps):
    exact = oracle_samples(schedule, prediction, sampler, steps)
    off = oracle_samples(schedule, prediction, sampler, steps, gain=1.01)
    moved = ((off - exact).pow(2).mean().sqrt() / S).item()
    assert moved <= 1.1 * ONE_PERCENT_SENSITIVITY[schedule, prediction, sampler, steps]


def test_ddim_is_diffusers_ddim_where_the_clip_is_inactive():
    """On the linear schedule (lambda_999 = -5.06 >= -5.1) our DDIM (first-order DPM-Solver++)
    takes the same steps as diffusers' DDIMScheduler (eta 0, trailing) and gives its samples."""
    from diffusers import DDIMScheduler

    for prediction in ("eps", "v"):
        config = make_scheduler_config("linear", prediction)
        denoise = gaussian_oracle(config)
        ours = sample(denoise, SHAPE, SEEDS[:4], "ddim", 50, config, progress=False)
        reference = DDIMScheduler.from_config(config, timestep_spacing="trailing")
        reference.set_timesteps(50)
        x = seeded_noise(SHAPE, [torch.Generator().manual_seed(s) for s in SEEDS[:4]])
        for t in reference.timesteps:
            x = reference.step(denoise(x, t.repeat(4)), t, x, eta=0.0).prev_sample
        torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)


def test_sampling_scheduler_settings():
    """Trailing spacing T / steps apart from the largest t with log-SNR >= the clip, down to
    sigma 0 (the last step returns the x0 prediction); DDPM runs every training timestep."""
    for schedule, first, last in (("cosine", 995, 35), ("linear", 999, 39)):
        config = make_scheduler_config(schedule, "eps")
        abar = alphas_cumprod(config)
        log_snr_half = 0.5 * torch.log(abar / (1 - abar))  # diffusers' lambda = log(alpha / sigma)
        assert int(torch.nonzero(log_snr_half >= LAMBDA_MIN_CLIPPED).max()) == first
        for sampler, order in (("ddim", 1), ("dpm++", 2)):
            scheduler = make_sampling_scheduler(sampler, config, 25)
            assert scheduler.config.algorithm_type == "dpmsolver++"
            assert scheduler.config.solver_order == order
            assert scheduler.config.timestep_spacing == "trailing"
            assert scheduler.config.lambda_min_clipped == LAMBDA_MIN_CLIPPED == -5.1
            assert scheduler.config.final_sigmas_type == "zero"
            assert scheduler.config.prediction_type == "epsilon"
            timesteps = scheduler.timesteps.tolist()
            assert len(timesteps) == 25 and timesteps[0] == first and timesteps[-1] == last
            assert set(torch.diff(scheduler.timesteps).tolist()) == {-40}
            assert scheduler.sigmas[-1] == 0 and len(scheduler.sigmas) == 26
        ddpm = make_sampling_scheduler("ddpm", config, 1000)
        assert ddpm.timesteps.tolist() == list(range(999, -1, -1))
        assert ddpm.config.variance_type == "fixed_small" and not ddpm.config.clip_sample
    v_config = make_scheduler_config("cosine", "v")
    assert make_sampling_scheduler("ddim", v_config, 50).config.prediction_type == "v_prediction"
