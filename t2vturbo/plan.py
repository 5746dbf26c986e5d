"""The dry run's plan: what a distillation run will load and what each step does, read from the recipe alone (no
weights loaded). ``t2vturbo distill RECIPE --dry-run`` prints it with the files still missing."""

from __future__ import annotations

from .config import Recipe


def describe_plan(recipe: Recipe) -> list[str]:
    """Human-readable plan of a run (for --dry-run): what will be loaded and what each step does."""
    from .teachers.loading import describe_family

    d, v, t, lo = recipe.distill, recipe.video, recipe.train, recipe.lora
    family = describe_family(recipe.model.teacher)
    targets = family["lora_targets"] if lo.target_modules == "all" else lo.target_modules
    solver = family["solver"].format(n=d.num_ddim_timesteps)
    lines = [
        f"teacher      {recipe.model.teacher} ({recipe.model.dtype}, device {recipe.model.device})",
        *([f"teacher from {family['files']}"] if family.get("files") else []),
        (f"student      the whole network (train.full_finetune: every parameter in fp32, the lora section unused) "
         f"+ guidance projection ({d.guidance_embed_dim}-d w embedding); the teacher is a frozen copy of the "
         "network" if t.full_finetune else
         f"student      LoRA rank {lo.rank} alpha {lo.alpha or lo.rank} dropout {lo.dropout} on "
         f"{targets} + guidance projection "
         f"({d.guidance_embed_dim}-d w embedding)"),
        f"video        {v.frames} frames {v.height}x{v.width} @ {v.fps} fps",
        f"solver       {solver}, skip k={d.skip}, w ~ U[{d.w_min}, {d.w_max}], "
        f"{d.loss} loss" + (f" (c={d.huber_c})" if d.loss == "huber" else "") + f", {d.target} target",
        f"training     {t.max_steps} steps, batch {t.batch_size}/process, lr {t.learning_rate}, {t.optimizer}, "
        f"grad clip {t.grad_clip}, precision {t.mixed_precision}, seed {t.seed}",
        *([f"motion       T2V-Turbo-v2 motion guidance: scale {d.motion.scale} on solver indices >= "
           f"{(1 - d.motion.percentage) * d.num_ddim_timesteps:g} (the clip DDIM-inverted to each, temporal-attention "
           f"prior x {d.motion.loss_scale:g}); the student learns motion_cond_proj + combine_proj"]
          if d.motion.scale > 0 else []),
        f"checkpoints  every {t.checkpoint_every} steps, keep {t.keep_checkpoints}",
        f"data         {recipe.data.source}" + (f" from {recipe.data.path}" if recipe.data.path else ""),
    ]
    if recipe.rewards:
        from .rewards import reward_spec

        for r in recipe.rewards:
            spec = reward_spec(r.name)
            frames = r.frames or ("6 random" if spec.kind == "image" else "model's")
            lines.append(f"reward       {r.name} ({spec.kind}) beta {r.weight}, frames {frames}"
                         + (f", checkpoint {r.checkpoint}" if r.checkpoint else ""))
    else:
        lines.append("reward       none (plain consistency distillation)")
    lines.append("loss         L_cd - sum(beta * R) on the single-step student prediction")
    return lines
