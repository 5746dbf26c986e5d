"""Probe: can the tiny UNet read the caption at pure noise? (docs/tiny-world.md, "Why the first tiny teacher was weak" (g))

At t = 999 of the DDIM schedule the noisy latent carries almost nothing of the clip, so where the object is in
each frame must come from the caption. This probe trains a fresh UNet (tiny.UNET_CONFIG) to regress the clean
latent x0 from pure noise at t = 999 on world clips, with a frozen text encoder, and every ``--report`` steps
decodes its prediction for the 48 captions and reads it with the judge. A model that can use the caption reads
colour, shape and motion right; one that cannot draws the caption-blind mean (a static blur).

  python scripts/probe_tiny_text.py --text trained --encoder-dir /tmp/tt/text_encoder   # after --stage text
  python scripts/probe_tiny_text.py --text random                                      # the first teachers' encoder

Measured on this 2-core CPU (batch 16, lr 1.5e-3, 150 steps, ~1.9 s/step) the numbers are in docs/tiny-world.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def main() -> None:
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextModel

    from t2vturbo.schedules import VPSchedule
    from t2vturbo.teachers import decode_latents, encode_pixels, encode_prompts
    from t2vturbo.tiny import teacher as tiny
    from t2vturbo.tiny.judge import judge
    from t2vturbo.tiny.world import all_captions, clips_for_captions, random_clips

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--text", choices=["trained", "random"], required=True)
    ap.add_argument("--encoder-dir", type=Path, default=None, help="text_encoder folder (with --text trained)")
    ap.add_argument("--vae-dir", type=Path, default=tiny.TEACHER_DIR / "vae")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--report", type=int, default=50)
    ap.add_argument("--signal", choices=["ddim", "none"], default="none",
                    help="none: train on pure noise (zero terminal SNR: only the caption can place the object); "
                         "ddim: the DDIM schedule's t = 999, whose sqrt(alpha_bar) = 0.068 of the clip the UNet "
                         "can read from its input")
    ap.add_argument("--input", choices=["noise", "zero"], default="noise",
                    help="zero: feed zeros instead of the noisy latent (what the UNet can learn with clean padding "
                         "cues for position and frame, free of input noise)")
    ap.add_argument("--only", default="", help="train and judge only the captions containing this, e.g. 'red circle'")
    ap.add_argument("--narrow", action="store_true",
                    help="a world without nuisances: fixed size and background, the object on the centre line")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.narrow:
        from t2vturbo.tiny import world

        world.HALF_SIZE, world.BACKGROUND_GREY, world.BACKGROUND_TINT, world.CROSS_JITTER = (5.5, 5.5), (0.32, 0.32), 0.0, 0.0

    parts = tiny.build_tiny_teacher(args.seed)
    tmp = Path("/tmp") / "probe_tiny_text_tokenizer"
    tiny.write_tiny_tokenizer(tmp)  # the fixed tokenizer (the shipped one may predate it)
    from transformers import CLIPTokenizer

    parts.tokenizer = CLIPTokenizer.from_pretrained(tmp)
    if args.text == "trained":
        if args.encoder_dir is None:
            raise SystemExit("--text trained needs --encoder-dir (the text_encoder folder --stage text wrote)")
        parts.text_encoder = CLIPTextModel.from_pretrained(args.encoder_dir)
    parts.text_encoder.eval().requires_grad_(False)
    parts.vae = AutoencoderKL.from_pretrained(args.vae_dir).eval().requires_grad_(False)
    parts.vae_scale = float(parts.vae.config.scaling_factor)
    captions = [c for c in all_captions() if args.only in c]
    table = encode_prompts(parts, captions)
    index = {c: i for i, c in enumerate(captions)}
    a999 = (VPSchedule.from_scheduler_config(tiny.SCHEDULER_CONFIG).alphas_cumprod[999] if args.signal == "ddim"
            else torch.tensor(0.0))

    torch.manual_seed(args.seed)
    unet = UNet3DConditionModel(**tiny.UNET_CONFIG).train()
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.01)
    t999 = torch.full((args.batch,), 999)
    eval_noise = torch.randn((len(captions), 4, tiny.FRAMES, tiny.HEIGHT // 2, tiny.WIDTH // 2),
                             generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # caption-blind bound: the loss of predicting the mean latent of every clip
        ref = encode_pixels(parts, clips_for_captions(captions * 4, seed=5))
        blind = (ref - ref.mean(0, keepdim=True)).pow(2).mean().item()
    t0, running = time.time(), None
    for step in range(args.steps):
        if args.only:
            caps = [captions[i] for i in torch.randint(len(captions), (args.batch,), generator=torch.Generator().manual_seed(step))]
            clips = clips_for_captions(caps, seed=77_000 + step)
        else:
            clips, caps = random_clips(args.batch, seed=77_000 + step)
        with torch.no_grad():
            x0 = encode_pixels(parts, clips)
        gen = torch.Generator().manual_seed(step)
        xt = a999.sqrt() * x0 + (1 - a999).sqrt() * torch.randn(x0.shape, generator=gen)
        if args.input == "zero":
            xt = torch.zeros_like(x0)
        pred = unet(xt, t999, encoder_hidden_states=table[[index[c] for c in caps]]).sample
        loss = F.mse_loss(pred, x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        if (step + 1) % args.report == 0:
            unet.eval()
            with torch.no_grad():
                xt = (1 - a999).sqrt() * eval_noise * (args.input == "noise")
                out = unet(xt, torch.full((len(captions),), 999), encoder_hidden_states=table).sample
                score = judge(decode_latents(parts, out), captions)
            unet.train()
            print(f"step {step + 1}: x0 mse {running:.4f} (caption-blind {blind:.4f}); judge of the prediction: "
                  f"colour {score['colour']:.2f} shape {score['shape']:.2f} motion {score['motion']:.2f} "
                  f"all {score['all']:.2f} ({time.time() - t0:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
