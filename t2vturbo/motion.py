"""T2V-Turbo-v2's motion guidance, in one module: its settings (:class:`MotionGuidance`), the motion prior the
teacher's ODE step gets while distilling (``distill.motion``), and the motion condition a v2 student is sampled with.

Distilling, for a training clip x0 and the step's noisy input x_t at solver index n (timestep t_n):
1. the reference: x0 DDIM-inverted along the solver grid up to t_n with the teacher's conditional noise
   (:func:`invert_latents`; step i goes from t_i - T/N, clipped at 0, to t_i);
2. the energy: MotionClone's temporal-attention distance between the teacher at (x_t, t_n) and at (reference,
   t_n), both on the caption (:func:`motion_prior_loss`, times ``loss_scale``);
3. the score: its gradient with respect to x_t (:func:`motion_prior_score`); the guided noise estimate is
   ``eps - scale * sqrt(1 - sqrt(alpha_bar_t)) * score`` (the reference's form, ``alpha_schedule`` being
   sqrt(alpha_bar)), applied only at indices n >= (1 - percentage) N, and the DDIM step uses it.

The reference precomputes all of this offline, one clip at a time; here it runs inside the training step, batched,
for the samples that get guidance only. Its cost is the inversion (up to N teacher calls) and one teacher forward
and backward per step: motion guidance is a GPU feature at full size.

Sampling, a v2 student gets the embedding of the scale on steps with t >= T (1 - percentage), the embedding of 0
on the others (the v2 pipeline). Where the network takes the condition, and where its temporal attention is, is
the family's business (:meth:`Teacher.record_motion_attention`, the ``motion_cond`` input of ``denoise``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .consistency import guidance_embedding

#: T2V-Turbo-v2's demo defaults for a motion-guided student
DEFAULT_SCALE = 0.05
DEFAULT_PERCENTAGE = 0.3


@dataclass
class MotionGuidance:
    """The motion guidance scale, the share of the timestep range that gets it, and (distilling) the energy's
    weight before its gradient is taken (the reference's ``temp_loss_scale``)."""

    scale: float = DEFAULT_SCALE
    percentage: float = DEFAULT_PERCENTAGE
    loss_scale: float = 100.0

    def record(self) -> dict[str, float]:
        """What a student distilled with it records (student.json ``motion``)."""
        return {"scale": self.scale, "percentage": self.percentage, "loss_scale": self.loss_scale}


@dataclass
class MotionStep:
    """One training step's motion inputs: which samples get guidance, their scale and embedding, and the clip
    and solver indices the prior inverts; ``energy`` is filled in by :func:`motion_guided_noise`."""

    active: torch.Tensor
    scale: torch.Tensor
    m_emb: torch.Tensor
    index: torch.Tensor
    latents: torch.Tensor
    energy: float | None = None


def motion_step_inputs(guidance: MotionGuidance, index: torch.Tensor, latents: torch.Tensor, num_ddim: int,
                       embed_dim: int) -> MotionStep:
    """Each sample's motion guidance scale (``scale`` at solver indices >= (1 - percentage) N, else 0, as the
    reference) and its embedding for the student."""
    active = index >= (1 - guidance.percentage) * num_ddim
    scale = active.float() * guidance.scale
    m_emb = guidance_embedding(scale.cpu(), embed_dim).to(latents.device, latents.dtype)
    return MotionStep(active=active, scale=scale, m_emb=m_emb, index=index, latents=latents)


def motion_guided_noise(teacher, motion: MotionStep, guidance: MotionGuidance, eps_g: torch.Tensor,
                        x_t: torch.Tensor, t_start: torch.Tensor, cond: torch.Tensor, fps: torch.Tensor | None,
                        solver_t: torch.Tensor, network=None) -> torch.Tensor:
    """The teacher's guided noise with the motion prior on the active samples (the caller holds the adapter off
    and dropout off): the clip inverted to t_start, the temporal-attention energy's gradient at x_t.
    ``network``: the teacher's network to run instead of its own (a full fine-tune's frozen copy)."""
    act = motion.active.nonzero().flatten()
    sub_fps = None if fps is None else fps[act]
    reference = invert_latents(teacher, motion.latents[act], motion.index[act], solver_t, cond[act], sub_fps,
                               network=network)
    score, _, _, energy = motion_prior_score(teacher, x_t[act], t_start[act], reference, cond[act], sub_fps,
                                             guidance.loss_scale, network=network)
    motion.energy = float(energy) / len(act)
    abar = teacher.schedule.alphas_cumprod.to(eps_g.device)[t_start[act]]
    eps_g = eps_g.clone()
    eps_g[act] = guided_noise(eps_g[act], score, motion.scale[act], abar)
    return eps_g


def motion_schedule(timesteps: list[int], percentage: float = DEFAULT_PERCENTAGE,
                    num_train_timesteps: int = 1000) -> list[bool]:
    """Which sampling steps get the motion guidance: those with t >= T (1 - percentage) (the v2 pipeline; the
    others get the embedding of 0, not no condition)."""
    threshold = num_train_timesteps * (1 - percentage)
    return [t >= threshold for t in timesteps]


def sampling_motion_embeddings(guidance: MotionGuidance, n: int, dim: int, device, dtype
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(the embedding of the scale, the embedding of 0) for ``n`` videos: the two motion conditions a v2 student
    is sampled with."""
    on = guidance_embedding(torch.full((n,), float(guidance.scale)), dim).to(device, dtype)
    off = guidance_embedding(torch.zeros(n), dim).to(device, dtype)
    return on, off


# ---------------------------------------------------------------------------------------------- the prior's maths
@torch.no_grad()
def invert_latents(teacher, latents: torch.Tensor, index: torch.Tensor, solver_t: torch.Tensor, text: torch.Tensor,
                   fps: torch.Tensor | None = None, step_ratio: int | None = None, network=None) -> torch.Tensor:
    """DDIM inversion of clean ``latents`` (B, C, F, h, w) along ``solver_t``, sample b up to ``solver_t[index[b]]``.

    Step i maps x at t_i - step_ratio (clipped at 0) to t_i with the teacher's epsilon at (x, t_i):
    ``x <- (x - sqrt(1 - a_prev) eps) sqrt(a_t / a_prev) + sqrt(1 - a_t) eps`` (T2V-Turbo-v2's reverse step).
    The caller runs it with the adapter off (the teacher), or gives the teacher's ``network`` to run."""
    if step_ratio is None:
        step_ratio = int(teacher.schedule.num_train_timesteps) // len(solver_t)
    abar = teacher.schedule.alphas_cumprod.to(latents.device, torch.float32)
    x = latents.float().clone()
    b = latents.shape[0]
    for i in range(int(index.max()) + 1):
        t = int(solver_t[i])
        a_t, a_prev = abar[t], abar[max(t - step_ratio, 0)]
        _, eps = teacher.denoise(x.to(latents.dtype),
                                 torch.full((b,), t, device=latents.device, dtype=solver_t.dtype), text, fps=fps,
                                 network=network)
        eps = eps.float()
        stepped = (x - (1 - a_prev).sqrt() * eps) * (a_t / a_prev).sqrt() + (1 - a_t).sqrt() * eps
        x = torch.where((index >= i).view(-1, 1, 1, 1, 1).to(x.device), stepped, x)
    return x.to(latents.dtype)


def motion_prior_score(teacher, x_t: torch.Tensor, t: torch.Tensor, reference: torch.Tensor, text: torch.Tensor,
                       fps: torch.Tensor | None = None, loss_scale: float = 100.0, network=None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(score, x0, eps, energy): the gradient of ``loss_scale`` x the motion energy with respect to ``x_t``, and
    the teacher's conditional prediction at x_t from the same forward. Each sample's energy is its own (the sum
    over the batch), as in the reference's one-clip preprocessing. The caller runs it with the adapter off, or
    gives the teacher's ``network`` to run (and record) instead."""

    def record():
        return teacher.record_motion_attention() if network is None else teacher.record_motion_attention(network)

    with torch.no_grad(), record() as ref:
        teacher.denoise(reference, t, text, fps=fps, network=network)
    # the backward stays inside the recording block: under block checkpointing it recomputes the attention, which
    # must run the same processor as the forward did (what it records then is not used)
    with torch.enable_grad(), record() as gen:
        x = x_t.detach().requires_grad_(True)
        x0, eps = teacher.denoise(x, t, text, fps=fps, network=network)
        maps = list(gen.probs)
        # equal-size, batch-major maps: the batch mean times B is the sum of the per-clip energies
        energy = loss_scale * motion_prior_loss(maps, ref.probs) * x_t.shape[0]
        (score,) = torch.autograd.grad(energy, x)
    return score.detach(), x0.detach(), eps.detach(), energy.detach()


def motion_prior_loss(probs: list[torch.Tensor], reference: list[torch.Tensor]) -> torch.Tensor:
    """MotionClone's temporal-attention energy as T2V-Turbo-v2 uses it: per layer the squared error between the
    sample's and the reference video's attention probabilities, only where the reference attends most (its top-1
    key frame for each query), then 100 x the mean over layers (the caller multiplies by ``loss_scale``)."""
    if len(probs) != len(reference):
        raise ValueError(f"{len(probs)} attention maps against {len(reference)} reference maps")
    losses = []
    for gen, ref in zip(probs, reference, strict=True):
        ref = ref.detach()
        mask = torch.zeros_like(ref, dtype=torch.bool).scatter_(-1, ref.argmax(dim=-1, keepdim=True), True)
        dt = torch.promote_types(gen.dtype, torch.float32)  # half maps in float32; float64 stays float64
        losses.append(torch.nn.functional.mse_loss(gen[mask].to(dt), ref[mask].to(dt)))
    return torch.stack(losses).mul(100).mean()


def guided_noise(eps: torch.Tensor, score: torch.Tensor, scale: torch.Tensor, alpha_bar_t: torch.Tensor) -> torch.Tensor:
    """``eps - scale * sqrt(1 - sqrt(alpha_bar_t)) * score`` per sample (the reference's motion-prior guidance)."""
    shape = (-1,) + (1,) * (eps.ndim - 1)
    w = scale.to(eps.device, torch.float32).view(shape) * (1 - alpha_bar_t.to(eps.device, torch.float32).sqrt()).sqrt().view(shape)
    return (eps.float() - w * score.float()).to(eps.dtype)
