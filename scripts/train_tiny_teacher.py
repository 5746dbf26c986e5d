"""Train the embedded tiny teacher on the tiny world (t2vturbo/tiny/world.py), reproducibly from a seed.

Stages (run in order; ``all`` runs the three):
  vae   train the AutoencoderKL (VAE_CONFIG) on single frames; set ``scaling_factor`` so latents have unit std.
  unet  train the UNet3DConditionModel (UNET_CONFIG) with the epsilon-prediction DDPM loss on VAE latents of
        world clips, 10% of captions dropped to "" so classifier-free guidance works. The CLIP text encoder is
        the random, frozen one of ``build_tiny_teacher(seed)`` (word-level tokens make its states distinct).
  eval  sample every caption of the world with DDIM + CFG (50 and 4 steps) and score with the analytic judge.

The result is a diffusers-layout folder (unet/ vae/ text_encoder/ tokenizer/ scheduler/, safetensors) that
``t2vturbo.tiny.load_tiny_teacher()`` picks up when it is t2vturbo/tiny/weights/teacher.

  python scripts/train_tiny_teacher.py --stage all --seed 0
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from t2vturbo.tiny import teacher as tiny
from t2vturbo.tiny.world import all_captions, random_clips

DEFAULT_OUT = Path(tiny.TEACHER_DIR)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warmup, then cosine decay to 10% of ``peak``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def no_dropout(model: torch.nn.Module) -> None:
    # the short CPU budget leaves the model under-fitted: dropout only slows it down
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


# ----------------------------------------------------------------------------------------------------------- VAE


def train_vae(out: Path, seed: int, steps: int, batch: int, lr: float, kl_weight: float) -> None:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**tiny.VAE_CONFIG)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed + 1)
    t0 = time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup=20)
        clips, _ = random_clips(batch // 2, seed=10_000 * (seed + 1) + step)
        idx = torch.randint(clips.shape[1], (batch // 2, 2), generator=gen)
        frames = torch.cat([clips[torch.arange(batch // 2), idx[:, k]] for k in range(2)]) * 2 - 1
        post = vae.encode(frames).latent_dist
        recon = vae.decode(post.sample()).sample
        rec = F.mse_loss(recon, frames)
        kl = 0.5 * (post.mean**2 + post.var - 1 - post.logvar).mean()
        loss = rec + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 20 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} rec_mse {rec.item():.5f} kl {kl.item():.3f} ({time.time() - t0:.0f}s)")
    vae.eval()
    with torch.no_grad():
        clips, _ = random_clips(32, seed=987_654 + seed)
        frames = clips.flatten(0, 1) * 2 - 1
        post = vae.encode(frames).latent_dist
        std = float(post.mean.std())
        recon = vae.decode(post.mean).sample
        mse = float(F.mse_loss((recon + 1) / 2, (frames + 1) / 2))
        mae = float(((recon - frames).abs() / 2).mean())
    scale = 1.0 / std
    vae.register_to_config(scaling_factor=scale)
    vae.save_pretrained(out / "vae", safe_serialization=True)
    stats = {"vae_steps": steps, "vae_seconds": round(time.time() - t0, 1), "vae_heldout_mse": mse,
             "vae_heldout_mae": mae, "latent_std": std, "scaling_factor": scale}
    _update_stats(out, stats)
    log(f"vae done: {stats}")


def _update_stats(out: Path, stats: dict) -> None:
    path = out / "training_stats.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    old.update(stats)
    path.write_text(json.dumps(old, indent=1))


# ---------------------------------------------------------------------------------------------------------- UNet


def train_unet(out: Path, seed: int, steps: int, batch: int, lr: float, drop: float, snr_gamma: float) -> None:
    from diffusers import AutoencoderKL, UNet3DConditionModel

    from t2vturbo.models import encode_pixels, encode_prompts, scaled_linear_alphas_cumprod

    parts = tiny.build_tiny_teacher(seed)  # random frozen text encoder + tokenizer
    parts.vae = AutoencoderKL.from_pretrained(out / "vae").eval().requires_grad_(False)
    parts.vae_scale = float(parts.vae.config.scaling_factor)
    parts.text_encoder.eval().requires_grad_(False)
    parts.text_encoder.save_pretrained(out / "text_encoder", safe_serialization=True)
    tiny.write_tiny_tokenizer(out / "tokenizer")  # vocab.json + merges.txt: readable by any CLIPTokenizer
    (out / "scheduler").mkdir(parents=True, exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(tiny.SCHEDULER_CONFIG, indent=1))

    captions = all_captions()
    table = encode_prompts(parts, captions + [""])  # (49, L, D): the world has only 48 captions
    index = {c: i for i, c in enumerate(captions)}

    torch.manual_seed(seed)
    unet = UNet3DConditionModel(**tiny.UNET_CONFIG)
    no_dropout(unet)
    unet.train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01)
    alphas = scaled_linear_alphas_cumprod()
    snr = alphas / (1 - alphas)
    gen = torch.Generator().manual_seed(seed + 2)
    t0 = time.time()
    running = None
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup=30)
        # 1. data: fresh clips every step, encoded with the frozen VAE
        clips, caps = random_clips(batch, seed=10_000 * (seed + 1) + 5_000_000 + step)
        with torch.no_grad():
            x0 = encode_pixels(parts, clips, generator=gen)  # (B, C, F, h, w)
        ids = torch.tensor([index[c] for c in caps])
        ids = torch.where(torch.rand(batch, generator=gen) < drop, len(captions), ids)  # caption dropout
        cond = table[ids]
        # 2. forward diffusion at uniform timesteps
        t = torch.randint(0, len(alphas), (batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        # 3. epsilon loss with min-SNR-gamma weights (converges faster in few steps)
        eps = unet(xt, t, encoder_hidden_states=cond).sample
        w = torch.clamp(snr[t], max=snr_gamma) / snr[t]
        loss = (w * (eps - noise).pow(2).mean(dim=(1, 2, 3, 4))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = min(0.995, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters(), strict=True):
                pe.lerp_(p, 1 - decay)
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if step % 10 == 0 or step == steps - 1:
            log(f"unet step {step}/{steps} loss {loss.item():.4f} avg {running:.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"({time.time() - t0:.0f}s)")
        if (step + 1) % 100 == 0 or step == steps - 1:
            ema.save_pretrained(out / "unet", safe_serialization=True)
    _update_stats(out, {"unet_steps": steps, "unet_batch": batch, "unet_lr": lr, "unet_seconds": round(time.time() - t0, 1),
                        "unet_final_loss_avg": running, "text_encoder": f"random frozen, build_tiny_teacher({seed})"})
    log("unet done")


# ---------------------------------------------------------------------------------------------------------- eval


def evaluate(out: Path, seed: int, guidance: float, steps_list: list[int], repeats: int) -> dict:
    from t2vturbo.models import load_diffusers_teacher
    from t2vturbo.sampling import sample_video
    from t2vturbo.tiny.judge import judge

    parts = load_diffusers_teacher(str(out))
    parts.unet.eval()
    parts.vae.eval()
    captions = all_captions() * repeats
    results = {}
    for steps in steps_list:
        t0 = time.time()
        videos = []
        for i in range(0, len(captions), 24):
            chunk = captions[i:i + 24]
            res = sample_video(parts, chunk, steps=steps, guidance=guidance, mode="teacher", frames=tiny.FRAMES,
                               height=tiny.HEIGHT, width=tiny.WIDTH, seed=[seed + i + k for k in range(len(chunk))])
            videos.append(res.videos)
        videos = torch.cat(videos)
        score = judge(videos, captions)
        row = {k: score[k] for k in ("colour", "shape", "motion", "all")}
        row["seconds_per_video"] = (time.time() - t0) / len(captions)
        results[f"ddim{steps}_cfg{guidance}"] = row
        log(f"eval DDIM {steps} steps, CFG {guidance}: {row}")
        if steps == steps_list[0]:
            try:
                import torchvision

                torchvision.utils.save_image(videos[:12].flatten(0, 1), Path("/tmp") / f"tiny_teacher_samples_{steps}.png",
                                             nrow=tiny.FRAMES)
            except Exception:  # noqa: BLE001 - a preview is optional
                pass
    _update_stats(out, {"eval": results})
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=["vae", "unet", "eval", "all"], default="all")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vae-steps", type=int, default=200)
    ap.add_argument("--vae-batch", type=int, default=12)
    ap.add_argument("--vae-lr", type=float, default=2e-3)
    ap.add_argument("--kl-weight", type=float, default=1e-4)
    ap.add_argument("--unet-steps", type=int, default=600)
    ap.add_argument("--unet-batch", type=int, default=8)
    ap.add_argument("--unet-lr", type=float, default=1e-3)
    ap.add_argument("--caption-dropout", type=float, default=0.1)
    ap.add_argument("--snr-gamma", type=float, default=5.0)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--eval-steps", type=int, nargs="+", default=[50, 4])
    ap.add_argument("--eval-repeats", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.stage in ("vae", "all"):
        train_vae(args.out, args.seed, args.vae_steps, args.vae_batch, args.vae_lr, args.kl_weight)
    if args.stage in ("unet", "all"):
        train_unet(args.out, args.seed, args.unet_steps, args.unet_batch, args.unet_lr, args.caption_dropout,
                   args.snr_gamma)
    if args.stage in ("eval", "all"):
        evaluate(args.out, args.seed, args.guidance, args.eval_steps, args.eval_repeats)


if __name__ == "__main__":
    main()
