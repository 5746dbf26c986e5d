"""The two distillation steps the benchmarks compare (bench/device_report.py, bench/distill_memory.py), written once.

- :func:`our_step`: t2vturbo's own, ``Distiller.training_step`` + ``apply_gradients``, with the bench's model (and
  rewards) given to the Distiller as its loaders. ONE network serves as teacher (adapter off), target and student;
  the teacher's cond + uncond pass is one batched forward, and teacher and target run without a graph BEFORE the
  student's forward, so their activations are gone when the student's are kept for the backward.
- :class:`ReferenceStep`: the reference implementation's layout, emulated with the same maths (docs/method.md): a
  separate full copy of the network as the teacher beside the student, which also gives the target; the student's
  forward with grad runs FIRST, then the teacher's cond and uncond passes as two calls and the target, while the
  student's activations are held; then each reward decodes its own frames (M random for an image reward, strided
  for a video reward) from the student's prediction.

Both read the same recipe (:func:`bench_recipe`), so they train the same student on the same clips.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from pathlib import Path

import torch

#: the seed of step i's random draws in the reference layout: REFERENCE_SEED + i
REFERENCE_SEED = 1000


def bench_recipe(teacher: str, device: str, dtype: str, video: tuple[int, int, int], rank: int, dropout: float,
                 batch_size: int = 1, threads: int = 0):
    """The recipe both steps read: the bench's model and clip shape, LoRA rank and dropout, one process, no
    checkpoints (``dtype`` float32 / bfloat16 / float16 sets the mixed precision to match)."""
    from t2vturbo.config import Recipe

    recipe = Recipe()
    recipe.model.teacher = teacher
    recipe.model.device = device
    recipe.model.dtype = dtype
    recipe.video.frames, recipe.video.height, recipe.video.width = video
    recipe.lora.rank, recipe.lora.dropout = rank, dropout
    recipe.train.batch_size = batch_size
    recipe.train.num_threads = threads
    recipe.train.mixed_precision = {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}[dtype]
    recipe.train.checkpoint_every = 10**6
    return recipe


def our_step(recipe, out: str | Path, make_model: Callable, rewards: dict | None = None):
    """(the set-up Distiller, ``step(pixels, captions) -> loss``): one training step and optimiser update each call.

    ``make_model()`` builds the teacher (moved to the recipe's device and dtype by the Distiller's loader);
    ``rewards`` maps each of the recipe's reward names to its built model. The Distiller has no data stream: the
    bench feeds its own clips."""
    from t2vturbo.distill import Distiller

    rewards = rewards or {}
    d = Distiller(recipe, out, log=lambda _: None, progress=False,
                  load_teacher=lambda spec, device, dtype: make_model().to(device=device, dtype=dtype),
                  load_reward=lambda name, **_: rewards[name],
                  make_stream=lambda *a, **k: None)
    d.setup()
    return d, distiller_step(d)


def distiller_step(d) -> Callable[[torch.Tensor, list[str]], torch.Tensor]:
    """``step(pixels, captions) -> loss`` of a set-up Distiller: its training step, then the optimiser update."""

    def step(pixels: torch.Tensor, captions: list[str]) -> torch.Tensor:
        loss, _ = d.training_step(pixels, captions)
        d.apply_gradients(loss)
        d.step += 1
        return loss.detach()

    return step


class ReferenceStep:
    """The reference implementation's layout of a training step (module docstring); ``step(pixels, captions)``
    runs one step and optimiser update and returns the loss.

    Args:
        recipe: read for the student (lora), the step (distill) and the optimiser (train); ``train.optimizer``
            adamw8bit is bitsandbytes' AdamW8bit at its defaults but the learning rate.
        teacher: the model (a :class:`t2vturbo.teachers.Teacher`, frozen, on its device and dtype); its network
            becomes the student in place, after a full copy of it is taken as the teacher.
        rewards: (reward config, model) pairs; an image reward sees ``config.frames`` random frames, a video reward
            ``config.frames`` (default its ``num_frames``) strided ones, weighted by ``config.weight``.
    """

    def __init__(self, recipe, teacher, rewards: list[tuple] = ()):
        from accelerate.utils import set_seed

        from t2vturbo.student import LoraSettings, make_student

        r, d = recipe, recipe.distill
        self.recipe, self.teacher, self.rewards = recipe, teacher, list(rewards)
        self.device, self.dtype = teacher.device, teacher.dtype
        set_seed(r.train.seed)
        self.teacher_copy = copy.deepcopy(teacher.network)  # the reference keeps a full teacher beside the student
        torch.manual_seed(r.train.seed)
        self.network = make_student(teacher, LoraSettings(rank=r.lora.rank, dropout=r.lora.dropout),
                                    d.guidance_embed_dim)
        self.params = [p for p in self.network.parameters() if p.requires_grad]
        for p in self.params:
            p.data = p.data.float()
        self.network.train()
        if r.train.optimizer == "adamw8bit":
            import bitsandbytes as bnb

            self.optimizer = bnb.optim.AdamW8bit(self.params, lr=r.train.learning_rate)
        else:
            self.optimizer = torch.optim.AdamW(self.params, lr=r.train.learning_rate,
                                               weight_decay=r.train.weight_decay, eps=r.train.adam_eps)
        self.schedule = teacher.schedule
        self.solver_t = self.schedule.solver_grid(d.num_ddim_timesteps).to(self.device)
        self.uncond = teacher.encode_text([""])
        self.fps = torch.tensor([r.video.fps], device=self.device) if teacher.supports_fps else None
        self.calls = 0

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def __call__(self, pixels: torch.Tensor, captions: list[str]) -> torch.Tensor:
        from t2vturbo.consistency import consistency_loss, lcm_guidance
        from t2vturbo.step import draw_step_inputs

        d, teacher, schedule, dev = self.recipe.distill, self.teacher, self.schedule, self.device
        gen = torch.Generator().manual_seed(REFERENCE_SEED + self.calls)
        self.calls += 1
        b = pixels.shape[0]
        with torch.no_grad():
            latents = teacher.encode_video(pixels.to(dev))
            cond = teacher.encode_text(captions)
            uncond = self.uncond.expand(b, -1, -1)
        _, t_start, t_end, x_t, w, w_emb = draw_step_inputs(d, schedule, self.solver_t, latents, gen)
        fps = self.fps.expand(b) if self.fps is not None else None

        with self.autocast():  # 1. the student first: its activations live through everything below
            x0_s, _ = teacher.denoise(x_t, t_start, cond, guidance_cond=w_emb, fps=fps, network=self.network)
        pred = schedule.consistency_output(x_t.float(), x0_s.float(), t_start)
        with torch.no_grad():
            with self.autocast():  # 2. the teacher copy, cond and uncond as two calls; LCM-form CFG, one DDIM step
                x0_c, eps_c = teacher.denoise(x_t, t_start, cond, fps=fps, network=self.teacher_copy)
                x0_u, eps_u = teacher.denoise(x_t, t_start, uncond, fps=fps, network=self.teacher_copy)
            x_prev = schedule.step(lcm_guidance(x0_c.float(), x0_u.float(), w),
                                   lcm_guidance(eps_c.float(), eps_u.float(), w), t_end).to(x_t.dtype)
            with self.autocast():  # 3. the target from the student
                x0_t, _ = teacher.denoise(x_prev, t_end, cond, guidance_cond=w_emb, fps=fps, network=self.network)
            target = schedule.consistency_output(x_prev.float(), x0_t.float(), t_end)
        loss = consistency_loss(pred, target, d.loss, d.huber_c)

        loss = self.subtract_rewards(loss, pred, captions, gen)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.recipe.train.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def subtract_rewards(self, loss: torch.Tensor, pred: torch.Tensor, captions: list[str],
                         gen: torch.Generator) -> torch.Tensor:
        """4. ``loss - beta * R`` for each reward in turn, each on frames of the prediction it decodes itself."""
        from t2vturbo.rewards import strided_frame_indices

        f = self.teacher.pixel_frames(pred.shape[2])
        for rc, model in self.rewards:
            if model.kind == "image":
                idx = sorted(torch.randperm(f, generator=gen)[:rc.frames].tolist())
            else:
                idx = strided_frame_indices(f, rc.frames or model.num_frames)
            frames = self.teacher.decode_video(pred.to(self.dtype), frames=idx)
            with self.autocast():
                loss = loss - rc.weight * model(frames, captions).float().mean()
        return loss
