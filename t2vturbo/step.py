"""One training step of T2V-Turbo (paper Algorithm 1; docs/method.md): draws, the teacher's guided ODE step and
the consistency target, the student's single-step prediction, mixed reward feedback, the optimiser update.

:class:`DistillStep` holds what a step needs (the teacher with its student adapter, the rewards, the schedule's
solver grid, the optimiser) and nothing about runs, files or processes; :class:`t2vturbo.distill.Distiller`
builds it and calls it. The maths it uses is :mod:`t2vturbo.consistency`'s and the schedule's.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from .config import Recipe
from .consistency import consistency_loss, guidance_embedding, lcm_guidance
from .data import Encoded, mix_seed
from .motion import MotionGuidance, MotionStep, motion_guided_noise, motion_step_inputs
from .rewards import RewardModel, reward_frame_indices
from .student import dropout_off, split_dropouts, teacher_mode, trainable_parameters
from .teachers import Teacher


def draw_step_inputs(d, schedule, solver_t: torch.Tensor, latents: torch.Tensor, gen: torch.Generator):
    """Step 2 of a training step from ``gen``, in this order: a solver index per sample, its timestep pair
    (t, t - k), the noise and x_t, and w ~ U[w_min, w_max] with its embedding (``d``: the recipe's distill
    section). Returns (index, t_start, t_end, x_t, w, w_emb), on the latents' device."""
    b, dev = latents.shape[0], latents.device
    index = torch.randint(0, d.num_ddim_timesteps, (b,), generator=gen).to(dev)
    t_start, t_end = schedule.solver_pair(index, d.skip, solver_t)
    noise = torch.randn(latents.shape, generator=gen).to(dev, latents.dtype)
    x_t = schedule.add_noise(latents, noise, t_start)
    w = d.w_min + (d.w_max - d.w_min) * torch.rand((b,), generator=gen)
    w_emb = guidance_embedding(w, d.guidance_embed_dim).to(dev, latents.dtype)
    return index, t_start, t_end, x_t, w.to(dev), w_emb


class EMATarget:
    """``distill.target: ema``: an exponential moving average of the trainable tensors, swapped in for the
    target's forward (:meth:`weights`) and updated after every optimiser step."""

    def __init__(self, network: torch.nn.Module, decay: float):
        self.network, self.decay = network, decay
        self.shadow = {n: p.detach().clone() for n, p in network.named_parameters() if p.requires_grad}

    @contextlib.contextmanager
    def weights(self):
        # copied in place, not swapped: FSDP gathers a sharded parameter from its own storage
        saved = {}
        with torch.no_grad():
            for n, p in self.network.named_parameters():
                if n in self.shadow:
                    saved[n] = p.detach().clone()
                    p.copy_(self.shadow[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.network.named_parameters():
                    if n in saved:
                        p.copy_(saved[n])

    @torch.no_grad()
    def update(self) -> None:
        for n, p in self.network.named_parameters():
            if n in self.shadow:
                self.shadow[n].lerp_(p.detach(), 1 - self.decay)


class DistillStep:
    """``step(pixels, captions) -> (loss, metrics)`` and ``step.apply_gradients(loss)``.

    Args:
        recipe: the run's recipe (``distill``, ``train`` and ``video`` sections are read).
        teacher: the teacher whose network carries the student adapter (made by :func:`make_student`).
        rewards: (reward config, frozen reward model) pairs; every one is computed on every rank.
        network: what the student's forward with grad runs through (its DDP wrapper; default the network).
        autocast: a context-manager factory for mixed precision (accelerate's ``autocast``).
        backward, clip_grad: accelerate's ``backward`` and ``clip_grad_norm_`` (default plain torch).
        rank: this process's rank (every random draw of a step comes from (seed, step, rank)).
        frozen: a fully fine-tuned student's teacher, a frozen copy of the original network (sharded like the
            network under FSDP): the teacher's passes run it instead of the network with its adapter off.
    """

    def __init__(self, recipe: Recipe, teacher: Teacher, rewards: list[tuple[Any, RewardModel]], *,
                 optimizer: torch.optim.Optimizer, scheduler: Any, network: torch.nn.Module | None = None,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                 backward: Callable[[torch.Tensor], None] | None = None, clip_grad: Callable | None = None,
                 motion: MotionGuidance | None = None, ema: EMATarget | None = None, rank: int = 0,
                 frozen: torch.nn.Module | None = None):
        self.recipe, self.teacher, self.rewards = recipe, teacher, rewards
        self.net = teacher.network
        self.ddp_net = network if network is not None else self.net
        self.optimizer, self.scheduler = optimizer, scheduler
        self.autocast = autocast
        self.backward = backward or (lambda loss: loss.backward())
        self.clip_grad = clip_grad or torch.nn.utils.clip_grad_norm_
        self.motion, self.ema, self.rank = motion, ema, rank
        self.frozen = frozen
        self.schedule = teacher.schedule
        self.device = teacher.device
        self.solver_t = self.schedule.solver_grid(recipe.distill.num_ddim_timesteps).to(self.device)
        self.uncond = teacher.encode_text([""])
        self.fps = torch.tensor([recipe.video.fps], device=self.device) if teacher.supports_fps else None
        # The frozen base model's dropout (diffusers' temporal convs carry Dropout(0.1)) is never active: the
        # teacher's ODE step and the target must be deterministic functions of their inputs. Only the LoRA
        # dropout is, and only in the student's forward.
        self.base_dropouts, self.lora_dropouts = split_dropouts(self.net)
        self.params = trainable_parameters(self.net)

    def seed(self, step: int) -> torch.Generator:
        """Every random draw of a step comes from (seed, step, rank): a resumed run replays it exactly."""
        s = mix_seed(self.recipe.train.seed, step, self.rank)
        torch.manual_seed(s)  # LoRA dropout uses the global generator
        random.seed(s)
        return torch.Generator().manual_seed(s)

    def __call__(self, pixels: torch.Tensor | Encoded, captions: list[str], step: int = 0,
                 clip_fps: list[float] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss and metrics of training step ``step``; ``pixels``: the clips (B, F, 3, H, W), or their
        prepared latents and text states (:class:`t2vturbo.data.Encoded`); ``clip_fps``: the rate each clip was
        read at (an fps-conditioned teacher is fed it; default video.fps)."""
        d, teacher, dev = self.recipe.distill, self.teacher, self.device
        gen = self.seed(step)
        b = len(captions)

        # 1. Encode the clip and the captions (frozen): a prepared batch is drawn from its stored posterior with
        # the same random numbers encode_video would use, and its text states are the text encoder's.
        with torch.no_grad():
            if isinstance(pixels, Encoded):
                latents = teacher.sample_latents(pixels.mean.to(dev), pixels.std.to(dev))
                cond = pixels.text.to(dev, latents.dtype)
            else:
                latents = teacher.encode_video(pixels.to(dev))
                cond = teacher.encode_text(captions)
            uncond = self.uncond.expand(b, -1, -1)

        # 2. Sample a solver index, its timestep pair, the noise and w ~ U[w_min, w_max].
        index, t_start, t_end, x_t, w, w_emb = draw_step_inputs(d, self.schedule, self.solver_t, latents, gen)
        fps = None
        if self.fps is not None:
            fps = self.fps.expand(b) if clip_fps is None else torch.tensor(clip_fps, device=dev, dtype=torch.float32)
        motion = (None if self.motion is None else
                  motion_step_inputs(self.motion, index, latents, d.num_ddim_timesteps, d.guidance_embed_dim))

        # 3-4. The teacher's guided ODE step and the consistency target (no graph).
        _, target = self.teacher_and_target(x_t, t_start, t_end, cond, uncond, w, w_emb, fps, motion)
        m_emb = motion.m_emb if motion else None

        metrics: dict[str, float] = {}
        split = bool(self.rewards) and self.recipe.train.split_reward_backward and torch.is_grad_enabled()
        if split:  # 6 before 5: the rewards' gradient on a graph-free prediction, then the student's graph
            reward_grad, rewards_total, reward_vals = self.reward_gradient(x_t, t_start, cond, w_emb, fps, captions,
                                                                           gen, m_emb)

        # 5. Student's single-step prediction (with grad) at t_start, through the DDP wrapper.
        with self.autocast():
            x0_s, _ = teacher.denoise(x_t, t_start, cond, guidance_cond=w_emb, fps=fps, network=self.ddp_net,
                                      motion_cond=m_emb)
        pred = self.schedule.consistency_output(x_t.float(), x0_s.float(), t_start)
        loss_cd = consistency_loss(pred, target, d.loss, d.huber_c)

        # 6. Mixed reward feedback on the decoded single-step prediction (no sampling chain: bounded memory).
        loss = loss_cd
        if split:
            # value cd - sum(beta R); gradient d cd + (dR/dpred) . dpred, the chain rule through the same pred
            linear = (pred * reward_grad).sum()
            loss = loss - (rewards_total + linear - linear.detach())
            metrics.update(reward_vals)
        elif self.rewards:
            rewards_total, reward_vals = self.reward_terms(pred, captions, gen)
            loss = loss - rewards_total
            metrics.update(reward_vals)
        metrics["loss_cd"] = float(loss_cd.detach())
        if motion is not None and motion.energy is not None:
            metrics["motion_energy"] = motion.energy
        return loss, metrics

    @torch.no_grad()
    def teacher_and_target(self, x_t, t_start, t_end, cond, uncond, w, w_emb, fps, motion: MotionStep | None = None):
        """Steps 3-4, with no dropout anywhere: (x at t_end by the teacher's guided DDIM step, the consistency
        target there). Deterministic: the same inputs give the same outputs.

        ``motion``: the samples it marks active get T2V-Turbo-v2's motion-prior guidance on the teacher's noise
        estimate (:mod:`t2vturbo.motion`), and the target sees the student's motion embedding."""
        teacher = self.teacher
        for m in self.base_dropouts:  # whatever called .train() on the network since setup
            m.eval()
        with dropout_off(self.lora_dropouts):
            # 3. Teacher (adapter off, or the frozen copy of a full fine-tune; no guidance embedding): cond and
            #    uncond in ONE batched forward, CFG in the LCM form on x0 and eps, then one DDIM step.
            with self.teacher_network(), self.autocast():
                x0_cu, eps_cu = teacher.denoise(torch.cat([x_t, x_t]), torch.cat([t_start, t_start]),
                                                torch.cat([cond, uncond]),
                                                fps=None if fps is None else torch.cat([fps, fps]),
                                                network=self.frozen)
            x0_c, x0_u = x0_cu.float().chunk(2)
            eps_c, eps_u = eps_cu.float().chunk(2)
            w_t = teacher.teacher_guidance(w, t_start)  # the scale the teacher's pipeline uses at t_start
            x0_g, eps_g = lcm_guidance(x0_c, x0_u, w_t), lcm_guidance(eps_c, eps_u, w_t)
            if motion is not None and bool(motion.active.any()):
                eps_g = self.motion_guided(eps_g, x_t, t_start, cond, fps, motion)
            x_prev = self.schedule.step(x0_g, eps_g, t_end).to(x_t.dtype)

            # 4. Target: the consistency function at (x_prev, t_end) from the online student (or its EMA).
            with self.ema.weights() if self.ema else contextlib.nullcontext(), self.autocast():
                x0_tgt, _ = teacher.denoise(x_prev, t_end, cond, guidance_cond=w_emb, fps=fps,
                                            motion_cond=None if motion is None else motion.m_emb)
            target = self.schedule.consistency_output(x_prev.float(), x0_tgt.float(), t_end)
        return x_prev, target

    def teacher_network(self) -> contextlib.AbstractContextManager:
        """Within the block ``teacher.denoise(..., network=self.frozen)`` is the teacher: the network with its
        adapter off, or (a full fine-tune) the frozen copy, which needs nothing switched."""
        return teacher_mode(self.net) if self.frozen is None else contextlib.nullcontext()

    def motion_guided(self, eps_g, x_t, t_start, cond, fps, motion: MotionStep) -> torch.Tensor:
        """The teacher's guided noise with the motion prior on the active samples (adapter off, or the frozen
        copy of a full fine-tune)."""
        with self.teacher_network(), self.autocast():
            return motion_guided_noise(self.teacher, motion, self.motion, eps_g, x_t, t_start, cond, fps,
                                       self.solver_t, network=self.frozen)

    def reward_gradient(self, x_t, t_start, cond, w_emb, fps, captions, gen, m_emb=None):
        """``train.split_reward_backward``: (d sum(beta R) / d pred, sum(beta R), per-reward means) from the
        student's prediction computed without a graph. The reward branch's activations are then freed before the
        student's graph is built, so the step's peak holds one of the two, not both; the cost is one more student
        forward without grad. Its dropout masks are drawn from a forked RNG, so the forward with grad that
        follows draws the same ones and predicts the same ``pred``."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad(), self.autocast():
            x0, _ = self.teacher.denoise(x_t, t_start, cond, guidance_cond=w_emb, fps=fps, network=self.net,
                                         motion_cond=m_emb)
        pred = self.schedule.consistency_output(x_t.float(), x0.float(), t_start).detach().requires_grad_(True)
        del x0
        total, vals = self.reward_terms(pred, captions, gen)
        (grad,) = torch.autograd.grad(total, pred)
        return grad, total.detach(), vals

    def reward_terms(self, pred: torch.Tensor, captions: list[str], gen: torch.Generator):
        """Decode only the frames the rewards need, once; return sum(beta * R) and the per-reward means."""
        f = self.teacher.pixel_frames(pred.shape[2])
        wanted = {i: reward_frame_indices(f, model, rc.frames, generator=gen)
                  for i, (rc, model) in enumerate(self.rewards)}
        union = sorted({j for idx in wanted.values() for j in idx})
        t = self.recipe.train
        graph = torch.is_grad_enabled() and pred.requires_grad
        recompute = t.reward_checkpointing and graph
        pixels = self.decode_for_rewards(pred.to(self.teacher.dtype), union,
                                         recompute or (t.decode_checkpointing and graph))
        pos = {j: k for k, j in enumerate(union)}
        total = pred.new_zeros(())
        vals = {}
        for i, (rc, model) in enumerate(self.rewards):
            frames = pixels[:, [pos[j] for j in wanted[i]]].float()
            if recompute:  # keep no reward-model activations: its forward runs again, alone, in the backward
                score = checkpoint(model, frames, captions, use_reentrant=False).float().mean()
            else:
                score = model(frames, captions).float().mean()
            total = total + rc.weight * score
            vals[f"reward/{rc.name}"] = float(score.detach())
        return total, vals

    def decode_for_rewards(self, latents: torch.Tensor, frames: list[int], recompute: bool) -> torch.Tensor:
        """Decode ``frames`` of the prediction for the rewards. With ``recompute`` (``train.reward_checkpointing``
        while a graph is built) the decoder's activations are not kept: each group of frames the family can decode
        on its own (:meth:`Teacher.decode_groups`, ``train.decode_chunk`` frames) is decoded again in the backward
        pass, so the reward branch holds only pixels (and each reward model's forward is checkpointed too)."""
        chunk = self.recipe.train.decode_chunk
        if not recompute:
            return self.teacher.decode_video(latents, frames=frames, chunk=chunk)
        return torch.cat([checkpoint(self.teacher.decode_video, latents, group, use_reentrant=False)
                          for group in self.teacher.decode_groups(frames, chunk)], dim=1)

    def apply_gradients(self, loss: torch.Tensor) -> torch.Tensor | None:
        """One optimiser update from a training step's loss: backward, gradient clipping, the optimiser and lr
        schedule steps, the EMA target's update. Returns the gradient norm before clipping (None unclipped)."""
        clip = self.recipe.train.grad_clip
        self.backward(loss)
        grad_norm = self.clip_grad(self.params, clip) if clip > 0 else None
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update()
        return grad_norm
