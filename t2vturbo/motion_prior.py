"""T2V-Turbo-v2's motion prior for distillation (``distill.motion``): where the teacher's ODE step gets its motion
guidance.

For a training clip x0 and the step's noisy input x_t at solver index n (timestep t_n):
1. the reference: x0 DDIM-inverted along the solver grid up to t_n with the teacher's conditional noise
   (:func:`invert_latents`; step i goes from t_i - T/N, clipped at 0, to t_i);
2. the energy: MotionClone's temporal-attention distance between the teacher at (x_t, t_n) and at (reference,
   t_n), both on the caption (:func:`t2vturbo.teachers.motion.motion_prior_loss`, times ``loss_scale``);
3. the score: its gradient with respect to x_t (:func:`motion_prior_score`); the guided noise estimate is
   ``eps - scale * sqrt(1 - sqrt(alpha_bar_t)) * score`` (the reference's form, ``alpha_schedule`` being
   sqrt(alpha_bar)), applied only at indices n >= (1 - percentage) N, and the DDIM step uses it.

The reference precomputes all of this offline, one clip at a time; here it runs inside the training step, batched,
for the samples that get guidance only. Its cost is the inversion (up to N teacher calls) and one teacher forward
and backward per step: motion guidance is a GPU feature at full size.
"""

from __future__ import annotations

import torch

from .teachers.motion import motion_prior_loss, record_temporal_attention


@torch.no_grad()
def invert_latents(parts, latents: torch.Tensor, index: torch.Tensor, solver_t: torch.Tensor, text: torch.Tensor,
                   fps: torch.Tensor | None = None, step_ratio: int | None = None) -> torch.Tensor:
    """DDIM inversion of clean ``latents`` (B, C, F, h, w) along ``solver_t``, sample b up to ``solver_t[index[b]]``.

    Step i maps x at t_i - step_ratio (clipped at 0) to t_i with the teacher's epsilon at (x, t_i):
    ``x <- (x - sqrt(1 - a_prev) eps) sqrt(a_t / a_prev) + sqrt(1 - a_t) eps`` (T2V-Turbo-v2's reverse step).
    The caller runs it with the adapter off (the teacher)."""
    if step_ratio is None:
        step_ratio = int(parts.schedule.num_train_timesteps) // len(solver_t)
    abar = parts.schedule.alphas_cumprod.to(latents.device, torch.float32)
    x = latents.float().clone()
    b = latents.shape[0]
    for i in range(int(index.max()) + 1):
        t = int(solver_t[i])
        a_t, a_prev = abar[t], abar[max(t - step_ratio, 0)]
        _, eps = parts.denoise(x.to(latents.dtype), torch.full((b,), t, device=latents.device, dtype=solver_t.dtype),
                               text, fps=fps)
        eps = eps.float()
        stepped = (x - (1 - a_prev).sqrt() * eps) * (a_t / a_prev).sqrt() + (1 - a_t).sqrt() * eps
        x = torch.where((index >= i).view(-1, 1, 1, 1, 1).to(x.device), stepped, x)
    return x.to(latents.dtype)


def motion_prior_score(parts, x_t: torch.Tensor, t: torch.Tensor, reference: torch.Tensor, text: torch.Tensor,
                       fps: torch.Tensor | None = None, loss_scale: float = 100.0
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(score, x0, eps, energy): the gradient of ``loss_scale`` x the motion energy with respect to ``x_t``, and
    the teacher's conditional prediction at x_t from the same forward. Each sample's energy is its own (the sum
    over the batch), as in the reference's one-clip preprocessing. The caller runs it with the adapter off."""
    with torch.no_grad(), record_temporal_attention(parts.unet) as ref:
        parts.denoise(reference, t, text, fps=fps)
    # the backward stays inside the recording block: under block checkpointing it recomputes the attention, which
    # must run the same processor as the forward did (what it records then is not used)
    with torch.enable_grad(), record_temporal_attention(parts.unet) as gen:
        x = x_t.detach().requires_grad_(True)
        x0, eps = parts.denoise(x, t, text, fps=fps)
        maps = list(gen.probs)
        # equal-size, batch-major maps: the batch mean times B is the sum of the per-clip energies
        energy = loss_scale * motion_prior_loss(maps, ref.probs) * x_t.shape[0]
        (score,) = torch.autograd.grad(energy, x)
    return score.detach(), x0.detach(), eps.detach(), energy.detach()


def guided_noise(eps: torch.Tensor, score: torch.Tensor, scale: torch.Tensor, alpha_bar_t: torch.Tensor) -> torch.Tensor:
    """``eps - scale * sqrt(1 - sqrt(alpha_bar_t)) * score`` per sample (the reference's motion-prior guidance)."""
    shape = (-1,) + (1,) * (eps.ndim - 1)
    w = scale.to(eps.device, torch.float32).view(shape) * (1 - alpha_bar_t.to(eps.device, torch.float32).sqrt()).sqrt().view(shape)
    return (eps.float() - w * score.float()).to(eps.dtype)
