"""Forward process, eps / v / x0 conversions and min-SNR weights against closed forms."""

import math

import pytest
import torch
from diffusers import DDPMScheduler

from pairforge.diffusion.objectives import (
    diffusion_loss,
    eps_from_v,
    min_snr_weight,
    q_sample,
    snr,
    training_target,
    v_from_eps,
    x0_from_eps,
    x0_from_v,
)
from pairforge.diffusion.schedule import alphas_cumprod, make_scheduler_config, prediction_of
from pairforge.errors import PairforgeError


@pytest.fixture(params=["linear", "cosine"])
def abar(request):
    return alphas_cumprod(make_scheduler_config(request.param, "eps"))


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(4, 3, 5, 5, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 999])
    return x0, eps, t


def test_linear_schedule_closed_form():
    abar = alphas_cumprod(make_scheduler_config("linear", "eps"))
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    expected = torch.cumprod(1 - betas, 0)
    assert abar.dtype == torch.float64 and abar.shape == (1000,)
    torch.testing.assert_close(abar, expected, rtol=1e-5, atol=1e-7)


def test_cosine_schedule_closed_form():
    abar = alphas_cumprod(make_scheduler_config("cosine", "eps"))
    f = [math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2 for t in range(1001)]
    betas = torch.tensor(
        [min(1 - f[t + 1] / f[t], 0.999) for t in range(1000)], dtype=torch.float64
    )
    torch.testing.assert_close(abar, torch.cumprod(1 - betas, 0), rtol=1e-5, atol=1e-7)


def test_forward_process_closed_form_pins_sqrt(abar):
    x0, eps, t = _batch()
    x_t = q_sample(x0, eps, t, abar)
    a = abar[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, a.sqrt() * x0 + (1 - a).sqrt() * eps)
    # The published grain bug scaled x0 by abar_t instead of sqrt(abar_t): must differ.
    buggy = a * x0 + (1 - a).sqrt() * eps
    assert (x_t[1:3] - buggy[1:3]).abs().max() > 1e-2
    # Matches diffusers' own forward process (the sampler's assumption).
    scheduler = DDPMScheduler.from_config(make_scheduler_config("linear", "eps"))
    diffusers_xt = scheduler.add_noise(x0.float(), eps.float(), t)
    linear_abar = alphas_cumprod(make_scheduler_config("linear", "eps"))
    torch.testing.assert_close(q_sample(x0, eps, t, linear_abar).float(), diffusers_xt)


def test_forward_process_statistics():
    """Empirical mean / variance of x_t given x0 equal sqrt(abar) x0 and 1 - abar."""
    abar = alphas_cumprod(make_scheduler_config("linear", "eps"))
    g = torch.Generator().manual_seed(1)
    x0 = torch.full((20000, 1, 1, 1), 0.7, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.full((20000,), 300)
    x_t = q_sample(x0, eps, t, abar)
    assert abs(x_t.mean().item() - abar[300].sqrt().item() * 0.7) < 0.02
    assert abs(x_t.var().item() - (1 - abar[300].item())) < 0.03


def test_v_eps_x0_conversions_round_trip(abar):
    x0, eps, t = _batch(2)
    x_t = q_sample(x0, eps, t, abar)
    v = v_from_eps(x0, eps, t, abar)
    torch.testing.assert_close(x0_from_v(x_t, v, t, abar), x0)
    torch.testing.assert_close(eps_from_v(x_t, v, t, abar), eps)
    torch.testing.assert_close(x0_from_eps(x_t[:3], eps[:3], t[:3], abar), x0[:3])
    # v closed form: v = sqrt(abar) eps - sqrt(1 - abar) x0.
    a = abar[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(v, a.sqrt() * eps - (1 - a).sqrt() * x0)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_velocity_matches_diffusers(schedule):
    config = make_scheduler_config(schedule, "v")
    x0, eps, t = _batch(5)
    v = v_from_eps(x0, eps, t, alphas_cumprod(config))
    scheduler = DDPMScheduler.from_config(config)
    expected = scheduler.get_velocity(x0.float(), eps.float(), t)
    torch.testing.assert_close(v.float(), expected, rtol=1e-4, atol=1e-5)


def test_min_snr_weights_closed_form(abar):
    t = torch.tensor([1, 100, 400, 900])
    gamma = 5.0
    ratio = abar[t] / (1 - abar[t])
    torch.testing.assert_close(snr(t, abar), ratio)
    eps_w = min_snr_weight(t, abar, gamma, "eps")
    v_w = min_snr_weight(t, abar, gamma, "v")
    torch.testing.assert_close(
        eps_w, torch.minimum(ratio, torch.tensor(gamma, dtype=torch.float64)) / ratio
    )
    torch.testing.assert_close(
        v_w, torch.minimum(ratio, torch.tensor(gamma, dtype=torch.float64)) / (ratio + 1)
    )
    # Low noise (t=1, huge SNR): eps weight gamma / SNR << 1; high noise: weight 1 (eps).
    assert eps_w[0] < 0.01 and eps_w[-1] == 1.0
    # Both weightings give the same weight on the x0-error: eps-err = snr * x0-err, v-err = (snr+1) * x0-err.
    torch.testing.assert_close(eps_w * ratio, v_w * (ratio + 1))


def test_loss_weighting_equivalent_on_x0_error(abar):
    """min-SNR weighted eps loss and v loss equal min(snr, gamma) * ||x0_hat - x0||^2."""
    x0, eps, t = _batch(3)
    x_t = q_sample(x0, eps, t, abar)
    g = torch.Generator().manual_seed(4)
    x0_hat = x0 + 0.1 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    # Predictions of eps and v consistent with x0_hat at the same x_t.
    a = abar[t].view(-1, 1, 1, 1)
    eps_hat = (x_t - a.sqrt() * x0_hat) / (1 - a).sqrt()
    v_hat = a.sqrt() * eps_hat - (1 - a).sqrt() * x0_hat
    x0_err = (x0_hat - x0).pow(2).flatten(1).mean(1)
    expected = torch.minimum(snr(t, abar), torch.tensor(5.0, dtype=torch.float64)) * x0_err
    eps_loss = diffusion_loss(eps_hat, x0, eps, t, abar, "eps", 5.0)
    v_loss = diffusion_loss(v_hat, x0, eps, t, abar, "v", 5.0)
    torch.testing.assert_close(eps_loss.double(), expected.float().double(), rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(v_loss.double(), expected.float().double(), rtol=1e-3, atol=1e-6)
    plain = diffusion_loss(eps_hat, x0, eps, t, abar, "eps", None)
    torch.testing.assert_close(
        plain.double(), (eps_hat - eps).pow(2).flatten(1).mean(1), rtol=1e-5, atol=1e-7
    )
    assert torch.equal(training_target(x0, eps, t, abar, "eps"), eps)


def test_schedule_errors_name_the_value():
    with pytest.raises(PairforgeError, match="'sigmoid'"):
        make_scheduler_config("sigmoid", "eps")
    with pytest.raises(PairforgeError, match="'x0'"):
        make_scheduler_config("linear", "x0")
    assert prediction_of(make_scheduler_config("cosine", "v")) == "v"
    assert make_scheduler_config("cosine", "v")["beta_schedule"] == "squaredcos_cap_v2"
