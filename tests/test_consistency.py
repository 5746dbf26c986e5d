import math

import torch

from t2vturbo.consistency import (
    boundary_scalings,
    consistency_loss,
    consistency_output,
    ddim_step,
    guidance_embedding,
    lcm_guidance,
)
from t2vturbo.schedules import VPSchedule, consistency_timesteps, scaled_linear_alphas_cumprod, solver_grid


def add_noise(x0, eps, a):
    """The forward process written out here, as a reference for the schedule: sqrt(a) x0 + sqrt(1 - a) eps."""
    a = a.reshape(-1, *([1] * (x0.ndim - 1)))
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


def predict_x0(eps, x_t, a):
    """x0 from an epsilon prediction, written out here as a reference: (x_t - sqrt(1 - a) eps) / sqrt(a)."""
    a = a.reshape(-1, *([1] * (x_t.ndim - 1)))
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


def test_solver_grid_and_sampling_timesteps_match_the_reference():
    t = solver_grid(1000, 50)
    assert t[0] == 19 and t[-1] == 999 and len(t) == 50 and (t.diff() == 20).all()
    assert consistency_timesteps(4) == [999, 759, 519, 279]
    assert consistency_timesteps(1) == [999]
    assert consistency_timesteps(2) == [999, 499]
    schedule = VPSchedule.standard()
    assert schedule.consistency_timesteps(4) == [999, 759, 519, 279]
    assert torch.equal(schedule.solver_grid(50), t)
    assert schedule.ddim_timesteps(5) == [801, 601, 401, 201, 1]


def test_schedule_configs_round_trip_through_diffusers():
    from diffusers import DDIMScheduler, LCMScheduler

    schedule = VPSchedule.standard()
    ddim = DDIMScheduler.from_config(schedule.scheduler_config())
    assert torch.allclose(ddim.alphas_cumprod, schedule.alphas_cumprod, atol=1e-7)
    ddim.set_timesteps(50)
    assert [int(t) for t in ddim.timesteps] == schedule.ddim_timesteps(50)
    lcm = LCMScheduler.from_config(schedule.lcm_scheduler_config(50))
    assert torch.allclose(lcm.alphas_cumprod, schedule.alphas_cumprod, atol=1e-7)
    assert VPSchedule.from_scheduler_config(schedule.scheduler_config()).describe() == schedule.describe()


def test_zero_snr_v_prediction_schedule_matches_diffusers():
    """The tiny teacher's schedule: betas rescaled to zero terminal SNR, v-prediction, trailing DDIM spacing."""
    import pytest
    from diffusers import DDIMScheduler, LCMScheduler

    from t2vturbo.errors import ConfigError
    from t2vturbo.tiny.teacher import ZERO_SNR_SCHEDULER_CONFIG as SCHEDULER_CONFIG

    schedule = VPSchedule.from_scheduler_config(SCHEDULER_CONFIG)
    assert schedule.prediction_type == "v_prediction" and schedule.zero_snr
    ddim = DDIMScheduler.from_config(schedule.scheduler_config())
    torch.testing.assert_close(ddim.alphas_cumprod, schedule.alphas_cumprod, atol=1e-6, rtol=0)
    assert float(schedule.alphas_cumprod[-1]) == 0.0  # the last timestep is pure noise
    for n in (1, 4, 7, 50):
        ddim.set_timesteps(n)
        assert [int(t) for t in ddim.timesteps] == schedule.ddim_timesteps(n)
    assert schedule.ddim_timesteps(4) == [999, 749, 499, 249]
    lcm = LCMScheduler.from_config(schedule.lcm_scheduler_config(50))
    assert lcm.config.prediction_type == "v_prediction"
    torch.testing.assert_close(lcm.alphas_cumprod, schedule.alphas_cumprod, atol=1e-6, rtol=0)
    # v target and its inverse, against diffusers' get_velocity; finite at the pure-noise step
    x0, noise = torch.randn(3, 4, 2, 3, 3), torch.randn(3, 4, 2, 3, 3)
    t = torch.tensor([0, 500, 999])
    v = schedule.training_target(x0, noise, t)
    torch.testing.assert_close(v, ddim.get_velocity(x0, noise, t), atol=1e-6, rtol=1e-5)
    x_t = schedule.add_noise(x0, noise, t)
    got_x0, got_eps = schedule.to_x0_eps(v, x_t, t)
    torch.testing.assert_close(got_x0, x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_eps, noise, atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="v_prediction"):
        VPSchedule.from_scheduler_config({**SCHEDULER_CONFIG, "prediction_type": "epsilon"})
    with pytest.raises(ConfigError, match="prediction_type"):
        VPSchedule.from_scheduler_config({**SCHEDULER_CONFIG, "prediction_type": "sample"})


def test_epsilon_schedule_to_x0_eps_is_predict_x0():
    schedule = VPSchedule.standard()
    x0, eps = torch.randn(2, 4, 3, 5, 5), torch.randn(2, 4, 3, 5, 5)
    t = torch.tensor([10, 900])
    x_t = schedule.add_noise(x0, eps, t)
    torch.testing.assert_close(x_t, add_noise(x0, eps, schedule.alphas_cumprod[t]))
    got_x0, got_eps = schedule.to_x0_eps(eps, x_t, t)
    torch.testing.assert_close(got_x0, predict_x0(eps, x_t, schedule.alphas_cumprod[t]))
    assert torch.equal(got_eps, eps) and torch.equal(schedule.training_target(x0, eps, t), eps)


def test_boundary_scalings():
    c_skip, c_out = boundary_scalings(torch.tensor([0, 1, 999]))
    assert c_skip[0] == 1 and c_out[0] == 0
    # c_skip^2 ... closed form at t = 1: 0.25 / (100 + 0.25)
    assert math.isclose(float(c_skip[1]), 0.25 / 100.25, rel_tol=1e-6)
    assert math.isclose(float(c_out[1]), 10 / math.sqrt(100.25), rel_tol=1e-6)
    assert float(c_out[2]) > 0.99999


def test_noise_x0_round_trip_and_ddim_step():
    a = scaled_linear_alphas_cumprod()
    x0 = torch.randn(2, 4, 3, 5, 5)
    eps = torch.randn_like(x0)
    t = torch.tensor([10, 900])
    x_t = add_noise(x0, eps, a[t])
    torch.testing.assert_close(predict_x0(eps, x_t, a[t]), x0, atol=1e-4, rtol=1e-4)
    # A DDIM step to the same timestep returns x_t itself.
    torch.testing.assert_close(ddim_step(x0, eps, a[t]), x_t, atol=1e-5, rtol=1e-5)
    # At t = 0 the consistency function is the identity on x_t.
    torch.testing.assert_close(consistency_output(x_t, x0, torch.tensor([0, 0])), x_t)


def test_lcm_guidance_form():
    c, u = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, 3.0]])
    out = lcm_guidance(c, u, torch.tensor([2.0]))
    torch.testing.assert_close(out, torch.tensor([[2.0, 0.0]]))


def test_guidance_embedding_formula():
    w = torch.tensor([7.5])
    e = guidance_embedding(w, 256)
    assert e.shape == (1, 256)
    i = torch.arange(128, dtype=torch.float32)
    args = 7500.0 * torch.exp(-math.log(10000.0) * i / 127)
    # w * 1000 reaches thousands of radians: another summation order moves sin/cos by ~1e-3 (fixture README).
    torch.testing.assert_close(e[0, :128], torch.sin(args), atol=1e-3, rtol=0)
    torch.testing.assert_close(e[0, 128:], torch.cos(args), atol=1e-3, rtol=0)


def test_guidance_embedding_matches_the_reference_vector():
    from conftest import shared_path
    from safetensors.torch import load_file

    d = load_file(str(shared_path("fixtures", "vc2_small_student", "inputs.safetensors")))
    # w * 1000 reaches thousands of radians, where float32 sin/cos kernels differ by up to ~1e-3 between CPUs (the
    # fixture README says so; measured 4.9e-4 on an AVX-512 machine): compare at that precision.
    torch.testing.assert_close(guidance_embedding(d["w"], 256), d["w_emb"], atol=1e-3, rtol=0)


def test_huber_and_l2():
    p, t = torch.zeros(4), torch.tensor([0.0, 1.0, -1.0, 0.0])
    c = 0.001
    expect = (2 * (math.sqrt(1 + c * c) - c)) / 4
    assert math.isclose(float(consistency_loss(p, t, "huber", c)), expect, rel_tol=1e-6)
    assert math.isclose(float(consistency_loss(p, t, "l2")), 0.5, rel_tol=1e-6)
