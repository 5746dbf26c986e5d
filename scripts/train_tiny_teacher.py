"""Train the embedded tiny teacher on the tiny world (t2vturbo/tiny/world.py), reproducibly from a seed.

Stages (run in order; ``all`` runs the four):
  vae   build the AutoencoderKL (VAE_CONFIG) from its analytic init (4x4 average pooling of RGB / nearest
        upsampling, exact on this world's flat frames), optionally train it on single frames (--vae-steps,
        --vae-focus-steps; the shipped VAE uses none: 200 steps from a random init reconstructed clips that the
        judge read right (all three) 16-19% of the time, and 100 decoder steps from the analytic init took the
        analytic 78% down to 72%), and set
        ``scaling_factor`` so latents have unit std.
  text  train the tiny CLIPTextModel (random init of ``build_tiny_teacher(seed)``) so that every attribute word
        writes its own orthogonal code into the token states from its position on (``text_targets``; seconds).
        The random encoder kept captions one word apart at cosine ~0.97, and the UNet could not tell the
        directions apart (docs/tiny-world.md, "Why the first tiny teacher was weak" (g)).
  unet  train the UNet3DConditionModel (UNET_CONFIG) with the DDPM loss of the tiny schedule (--zero-snr:
        v-prediction on betas rescaled to zero terminal SNR, tiny.ZERO_SNR_SCHEDULER_CONFIG; min-SNR-gamma
        weights) on VAE latents of world clips, 10% of captions dropped to "" so classifier-free guidance works.
        The text encoder is the frozen one of the text stage (--text-source random: the random init).
  eval  sample every caption of the world with DDIM + CFG (4 and 50 steps) and score with the analytic judge.

The result is a diffusers-layout folder (unet/ vae/ text_encoder/ tokenizer/ scheduler/, safetensors) that
``t2vturbo.tiny.load_tiny_teacher()`` picks up when it is t2vturbo/tiny/weights/teacher.

  python scripts/train_tiny_teacher.py --stage all --seed 0 --zero-snr --unet-steps 900 --unet-batch 16 \
      --unet-lr 1.5e-3 --out runs/tiny-teacher
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
from t2vturbo.tiny import world
from t2vturbo.tiny.judge import judge
from t2vturbo.tiny.world import all_captions, random_clips, random_params, render

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


@torch.no_grad()
def add_frame_code(layer, scale: float = 0.6) -> None:
    """Initialise one diffusers TemporalConvLayer so that it adds a code of the frame index to the first channels
    of the residual stream, built from its zero padding alone (the same for every input).

    diffusers' UNet3D has no temporal position: its temporal attention is permutation-equivariant over frames and
    only the zero padding of the kernel-3 temporal convolutions tells frames apart, which a small model does not
    learn to use in a CPU budget (at pure noise it then cannot say where a moving object is in frame f, and draws
    it still). Here conv1 turns input channel 0 into a constant (GroupNorm weight 0, bias 2); conv1 shifts it one
    frame either way (so the first / last frame read the padding), conv2-conv4 shift further and mix, and conv4
    writes the result, centred, into the stream. The code channels fill whole GroupNorm groups, so their
    normalisation never sees the content channels; everything stays trainable and the architecture is stock."""
    convs = [layer.conv1, layer.conv2, layer.conv3, layer.conv4]
    group = layer.in_dim // convs[0][0].num_groups
    n = group * math.ceil(8 / group)
    taps0 = [(1, 0, 0), (0, 0, 1), (0, 1, 0), (1, 1, 0), (0, 1, 1), (1, 0, 0), (0, 0, 1), (0, 1, 0)]
    convs[0][0].weight[0] = 0.0
    convs[0][0].bias[0] = 2.0
    for i, seq in enumerate(convs):
        gn, conv = seq[0], seq[-1]
        conv.weight[:n] = 0.0
        conv.bias[:n] = 0.0
        conv.weight[n:, :n] = 0.0  # the content channels do not read the code at init
        if i > 0:
            gn.weight[:n] = 0.5  # a monotone range of SiLU
            gn.bias[:n] = 2.0
        for k in range(n):
            if i == 0:
                conv.weight[k, 0, :, 0, 0] = torch.tensor(taps0[k % 8], dtype=conv.weight.dtype)
            else:
                conv.weight[k, k, :, 0, 0] = torch.tensor((1.0, 0.0, 0.0) if k % 2 == 0 else (0.0, 0.0, 1.0))
                conv.weight[k, (k + 2) % n, 1, 0, 0] += 0.5
    last = convs[3][-1]
    last.weight[:n] *= scale
    probe = torch.zeros(8, layer.in_dim, 1, 1)
    training = layer.training
    layer.eval()  # the layer's dropout would make the probe a random draw
    code = (layer(probe, num_frames=8) - probe)[:, :n, 0, 0]  # (frames, n): the padding's code
    layer.train(training)
    last.bias[:n] = -code.mean(dim=0)


def frame_code_layers(unet) -> list:
    """The temporal convolutions that get a frame code: the first of the top and of the bottom level."""
    return [unet.down_blocks[0].temp_convs[0], unet.down_blocks[-1].temp_convs[0]]


# ----------------------------------------------------------------------------------------------------------- VAE


@torch.no_grad()
def analytic_vae_init(vae, k: float = 20.0, beta: float = 8.0, logvar: float = -9.0, offset: float = -0.35,
                      blur: bool = True) -> None:
    """Set the AutoencoderKL weights so it is (almost exactly) 4x4 average pooling of RGB and bilinear upsampling.

    Every residual branch is zeroed (resnet conv2, attention out-projection), so only the skip path is left:
    conv_in, the downsampling convs (2x2 average), the channel-changing shortcuts, the upsampling convs and the
    final GroupNorm -> SiLU -> conv_out. The content channels travel as +x/-x pairs next to +-k constant channels
    in the same norm group, which keeps that GroupNorm linear (group mean 0, std ~ set by k), and the GroupNorm
    shift ``beta`` keeps the SiLU in its linear range.

    ``offset`` is subtracted from the [-1, 1] pixel values on the way in (and added back on the way out), so
    a typical background is latent 0: latents are sparse (only the object is non-zero), and the zero padding
    of the upsampling convs matches the background. With ``blur`` each decoder upsampler is nearest-2x followed
    by the [1, 2, 1] / 4 filter in both axes, which is exactly bilinear 2x upsampling: decoded objects have
    smooth edges instead of 4x4 blocks.
    """
    enc, dec = vae.encoder, vae.decoder
    # a layout: channels 0-5 = r, -r, g, -g, b, -b; channels 6-15 = +k, -k, ...
    n_const = 10

    def zero_(m):
        for p in m.parameters():
            p.zero_()

    def identity_1x1(conv):  # copy the first min(c_in, c_out) channels
        conv.weight.zero_()
        n = min(conv.in_channels, conv.out_channels, 16)
        centre = tuple(s // 2 for s in conv.kernel_size)
        for i in range(n):
            conv.weight[(i, i, *centre)] = 1.0
        if conv.bias is not None:
            conv.bias.zero_()

    for module in list(enc.modules()) + list(dec.modules()):
        name = type(module).__name__
        if name == "ResnetBlock2D":
            zero_(module.conv2)
            if module.conv_shortcut is not None:
                identity_1x1(module.conv_shortcut)
        elif name == "Attention":
            zero_(module.to_out[0])
    for block in enc.down_blocks:
        for ds in block.downsamplers or []:
            conv = ds.conv
            conv.weight.zero_()
            conv.bias.zero_()
            for i in range(16):
                conv.weight[i, i, :2, :2] = 0.25  # with the (0, 1, 0, 1) pad: mean of each 2x2 cell
    kernel = torch.tensor([1.0, 2.0, 1.0]) / 4
    for block in dec.up_blocks:
        for us in block.upsamplers or []:
            identity_1x1(us.conv)
            if blur:
                for i in range(6):  # the content pairs only: the constants must stay constant
                    us.conv.weight[i, i] = kernel[:, None] * kernel[None, :]

    def embed(conv, n_in, shift):  # n_in content inputs -> +-pairs, plus +-k constants from the bias
        conv.weight.zero_()
        conv.bias.zero_()
        centre = tuple(s // 2 for s in conv.kernel_size)
        for c in range(n_in):
            conv.weight[(2 * c, c, *centre)] = 1.0
            conv.weight[(2 * c + 1, c, *centre)] = -1.0
            conv.bias[2 * c] = -shift
            conv.bias[2 * c + 1] = shift
        for j in range(n_const):
            conv.bias[6 + j] = k if j % 2 == 0 else -k

    def read_out(norm, conv, n_out, shift):
        # the content pairs share norm group 0 with (group - 6) constants: sigma ~ k * sqrt(those / group)
        group = norm.num_channels // norm.num_groups
        sigma = k * (min(n_const, group - 6) / group) ** 0.5
        norm.weight.fill_(1.0)
        norm.bias.fill_(beta)
        conv.weight.zero_()
        conv.bias.zero_()
        centre = tuple(s // 2 for s in conv.kernel_size)
        slope = torch.sigmoid(torch.tensor(beta)) * (1 + beta * (1 - torch.sigmoid(torch.tensor(beta))))
        for c in range(n_out):
            # silu(beta + x/sigma) - silu(beta + (-x)/sigma) ~ 2 x / sigma * silu'(beta)
            conv.weight[(c, 2 * c, *centre)] = sigma / (2 * slope)
            conv.weight[(c, 2 * c + 1, *centre)] = -sigma / (2 * slope)
            conv.bias[c] = shift

    embed(enc.conv_in, 3, offset)
    read_out(enc.conv_norm_out, enc.conv_out, 3, 0.0)
    # conv_out gives 8 channels: 4 means (r, g, b, 0) then 4 log-variances
    enc.conv_out.bias[4:].fill_(logvar)
    if vae.quant_conv is not None:
        identity_1x1(vae.quant_conv)
        vae.quant_conv.weight[4:, 4:, 0, 0] = torch.eye(4)
    if vae.post_quant_conv is not None:
        identity_1x1(vae.post_quant_conv)
    embed(dec.conv_in, 3, 0.0)
    read_out(dec.conv_norm_out, dec.conv_out, 3, offset)


def _vae_batch(step: int, seed: int, batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` frames in [-1, 1] (two per fresh clip) and a mask of the object and its surroundings."""
    params = random_params(batch // 2, seed=10_000 * (seed + 1) + step)
    clips = render(params)
    idx = torch.randint(clips.shape[1], (batch // 2, 2), generator=gen)
    rows = torch.arange(batch // 2)
    frames = torch.cat([clips[rows, idx[:, k]] for k in range(2)])
    bg = params.background.repeat(2, 1)[:, :, None, None]
    obj = ((frames - bg).abs().amax(dim=1, keepdim=True) > 0.02).float()
    near = F.max_pool2d(obj, 5, stride=1, padding=2)  # the edges matter as much as the inside
    return frames * 2 - 1, near


def train_vae(out: Path, seed: int, steps: int, batch: int, lr: float, kl_weight: float, focus_steps: int,
              focus_weight: float, resume: bool, init: str, decoder_only: bool) -> None:
    """Init (``analytic``: 4x4 average pooling / nearest upsampling, see :func:`analytic_vae_init`; or random),
    then phase 1: plain MSE on whole frames, phase 2 (``focus_steps``): L1 weighted ``1 + focus_weight`` on the
    object, which fills ~5% of a frame. ``decoder_only`` keeps the encoder, so latents stay the same."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    t0 = time.time()
    if resume:
        vae = AutoencoderKL.from_pretrained(out / "vae")
        steps = 0
    else:
        vae = AutoencoderKL(**tiny.VAE_CONFIG)
        if init == "analytic":
            analytic_vae_init(vae)
    vae.train()
    if decoder_only:
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    phases = [("plain", steps, seed + 1, 0.0, lr), ("focus", focus_steps, seed + 3, focus_weight, lr / 2)]
    for name, n_steps, gen_seed, weight, peak in phases:
        if n_steps == 0:
            continue
        opt = torch.optim.AdamW([p for p in vae.parameters() if p.requires_grad], lr=peak, weight_decay=0.0)
        gen = torch.Generator().manual_seed(gen_seed)
        for step in range(n_steps):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, n_steps, peak, warmup=20)
            frames, near = _vae_batch(step + (0 if name == "plain" else 1_000_000), seed, batch, gen)
            with torch.set_grad_enabled(not decoder_only):
                post = vae.encode(frames).latent_dist
            recon = vae.decode(post.sample(generator=gen if weight else None)).sample
            if weight:
                rec = ((recon - frames).abs() * (1 + weight * near)).mean() / (1 + weight * near.mean())
            else:
                rec = F.mse_loss(recon, frames)
            kl = 0.5 * (post.mean**2 + post.var - 1 - post.logvar).mean()
            loss = rec + (0.0 if decoder_only else kl_weight) * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt.step()
            if step % 20 == 0 or step == n_steps - 1:
                log(f"vae {name} step {step}/{n_steps} rec {rec.item():.5f} kl {kl.item():.3f} ({time.time() - t0:.0f}s)")
    vae.eval()
    with torch.no_grad():
        clips, caps = random_clips(32, seed=987_654 + seed)
        frames = clips.flatten(0, 1) * 2 - 1
        post = vae.encode(frames).latent_dist
        std = float(post.mean.std())
        recon = ((vae.decode(post.mean).sample + 1) / 2).clamp(0, 1)
        mse = float(F.mse_loss(recon, clips.flatten(0, 1)))
        mae = float((recon - clips.flatten(0, 1)).abs().mean())
        judged = judge(recon.reshape(clips.shape), caps)
    scale = 1.0 / std
    vae.register_to_config(scaling_factor=scale)
    vae.save_pretrained(out / "vae", safe_serialization=True)
    stats = {"vae_seconds" + ("_focus" if resume else ""): round(time.time() - t0, 1), "vae_heldout_mse": mse,
             "vae_heldout_mae": mae, "latent_std": std, "scaling_factor": scale,
             "vae_recon_judge": {k: judged[k] for k in ("colour", "shape", "motion", "all")}}
    _update_stats(out, stats)
    log(f"vae done: {stats}")


def _update_stats(out: Path, stats: dict) -> None:
    path = out / "training_stats.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    old.update(stats)
    path.write_text(json.dumps(old, indent=1))


# ---------------------------------------------------------------------------------------------------------- text

#: how strongly each attribute word writes its code into the token states (relative to the base code, 1)
TEXT_CODE_WEIGHTS = {"colour": 1.5, "shape": 1.5, "direction": 2.0}


def text_targets(tokenizer, captions: list[str], seed: int,
                 weights: dict[str, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (N, L) of ``captions`` and the hidden states (N, L, D) the text stage trains the encoder to give.

    Every state is ``sqrt(D) * normalize(q0 + sum of w * code(word))`` over the attribute words (colour, shape,
    direction) at or before that position, so the encoder stays causal, as CLIP is, and every token after the last
    word carries the whole caption. The 1 + 12 codes are orthonormal and orthogonal to the all-ones vector, so a
    target has zero mean and norm sqrt(D): exactly what CLIP's final LayerNorm can output. Captions one word apart
    are then cosine ~0.6-0.7 apart instead of the random encoder's ~0.97 (docs/tiny-world.md, "Why the first tiny teacher was
    weak" (g)); the empty caption is q0 everywhere."""
    dim = tiny.TEXT_CONFIG["hidden_size"]
    words = [*tiny.COLOURS, *tiny.SHAPES, *tiny.DIRECTIONS]
    kind = {**{w: "colour" for w in tiny.COLOURS}, **{w: "shape" for w in tiny.SHAPES},
            **{w: "direction" for w in tiny.DIRECTIONS}}
    gen = torch.Generator().manual_seed(7_919 * (seed + 1))
    basis = torch.cat([torch.ones(dim, 1), torch.randn(dim, len(words) + 1, generator=gen)], dim=1)
    codes = torch.linalg.qr(basis).Q[:, 1:].T  # (13, D), orthonormal, each orthogonal to ones
    weights = {**TEXT_CODE_WEIGHTS, **(weights or {})}
    code_of = {w: codes[i + 1] * weights[kind[w]] for i, w in enumerate(words)}
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    vocab = {i: t.replace("</w>", "") for t, i in tokenizer.get_vocab().items()}
    targets = torch.empty(len(captions), ids.shape[1], dim)
    for n in range(len(captions)):
        acc = codes[0].clone()
        for pos, tok in enumerate(ids[n].tolist()):
            acc = acc + code_of.get(vocab[tok], 0.0)
            targets[n, pos] = math.sqrt(dim) * acc / acc.norm()
    return ids, targets


def train_text(out: Path, seed: int, steps: int, lr: float, weights: dict[str, float] | None = None) -> dict:
    """Train the tiny CLIPTextModel (from ``build_tiny_teacher(seed)``) to the states of ``text_targets``.

    Full batch (the 48 captions and ""), MSE, Adam; seconds on the CPU. Writes OUT/tokenizer and OUT/text_encoder."""
    from transformers import CLIPTokenizer

    parts = tiny.build_tiny_teacher(seed)
    tiny.write_tiny_tokenizer(out / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(out / "tokenizer")
    text = parts.text_encoder
    if text.config.vocab_size != len(tokenizer):
        raise SystemExit(f"tokenizer has {len(tokenizer)} tokens, text encoder {text.config.vocab_size}")
    weights = {**TEXT_CODE_WEIGHTS, **(weights or {})}
    ids, targets = text_targets(tokenizer, all_captions() + [""], seed, weights)
    no_dropout(text)
    text.train().requires_grad_(True)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(text.parameters(), lr=lr)
    t0 = time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup=20)
        loss = F.mse_loss(text(ids).last_hidden_state, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"text step {step}/{steps} mse {loss.item():.5f}")
    text.eval().requires_grad_(False)
    with torch.no_grad():
        states = text(ids).last_hidden_state
    last = F.normalize(states[:, -1], dim=-1)
    cos = last[:-1] @ last[:-1].T
    one_word = [cos[i, j].item() for i, ci in enumerate(all_captions()) for j, cj in enumerate(all_captions())
                if i < j and sum(a != b for a, b in zip(ci.split(), cj.split(), strict=True)) == 1]
    stats = {"text_steps": steps, "text_lr": lr, "text_code_weights": weights, "text_seconds": round(time.time() - t0, 1),
             "text_mse": F.mse_loss(states, targets).item(), "text_one_word_cosine_max": max(one_word),
             "text_encoder": f"trained to text_targets(seed={seed}) from build_tiny_teacher({seed})"}
    text.save_pretrained(out / "text_encoder", safe_serialization=True)
    _update_stats(out, stats)
    log(f"text done: {stats}")
    return stats


# ---------------------------------------------------------------------------------------------------------- UNet


def train_unet(out: Path, seed: int, steps: int, batch: int, lr: float, drop: float, snr_gamma: float,
               stop_after: int | None = None, checkpoint_dir: Path | None = None, checkpoint_every: int = 100,
               eval_every: int = 0, eval_steps: int = 25, guidance: float = 7.5, extend: int | tuple[int, ...] = 0,
               extend_lr: float | tuple[float | None, ...] | None = None, high_frac: float = 0.0, high_from: int = 800,
               zero_snr: bool = False, frame_code: bool = False, trail: tuple[tuple[float, float], ...] = (),
               travel: tuple[float, float] | None = None, train_text: bool = False,
               attention_head_dim: int | None = None, text_source: str = "trained", x0_floor: float = 0.0) -> None:
    """DDPM training of the UNet (the prediction type of tiny.SCHEDULER_CONFIG). Every random draw of step ``i`` comes from (seed, i), so a run stopped
    at a checkpoint and resumed ends with the same weights as an uninterrupted one.

    ``extend`` more steps after the ``steps`` of the first cosine schedule run a second one (warm restart to
    ``extend_lr``): how a finished teacher is trained further without changing what its first phase did. A tuple
    of steps (with one lr each, or one lr for all) runs one such phase after another, so a run extended once can be
    extended again: earlier phases keep their schedules.

    ``high_frac`` of the samples draw their timestep from [``high_from``, 1000) instead of the whole range. The
    layout of a video (where the object starts, which way it goes) is decided in the first, noisiest sampling
    steps, and only there must it come from the caption: at lower noise it can be read from the noisy input.

    ``train_text`` trains the CLIP text encoder with the UNet (same optimiser, its own EMA) instead of keeping
    the random frozen one: a frozen random encoder keeps captions that differ in one word only ~25% apart, and
    mixes a word into every later token, so the UNet has to tease the direction word out of small differences.

    ``text_source`` "trained" (the default) uses the frozen encoder that ``--stage text`` wrote to OUT/text_encoder;
    "random" the random one of ``build_tiny_teacher(seed)``, as the first teachers did.

    ``x0_floor`` > 0 floors the x0-space weight of the epsilon loss at high noise: ``max(min(snr, g), floor) / snr``.
    Min-SNR weights give the x0 error at t = 999 a weight of snr ~0.005; there the caption alone decides where the
    object is and which way it goes."""
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from safetensors.torch import load_file, save_file
    from transformers import CLIPTextModel, CLIPTokenizer

    from t2vturbo.schedules import VPSchedule
    from t2vturbo.teachers import DEFAULTS_FILE, encode_pixels, encode_prompts

    parts = tiny.build_tiny_teacher(seed)  # random text encoder (frozen unless train_text) + tokenizer
    tiny.write_tiny_tokenizer(out / "tokenizer")  # vocab.json + merges.txt: readable by any CLIPTokenizer
    parts.tokenizer = CLIPTokenizer.from_pretrained(out / "tokenizer")  # train on exactly what is shipped
    if text_source == "trained":  # the frozen encoder of --stage text
        if not (out / "text_encoder" / "model.safetensors").is_file():
            raise SystemExit(f"no {out / 'text_encoder'}: run --stage text first (or pass --text-source random)")
        parts.text_encoder = CLIPTextModel.from_pretrained(out / "text_encoder")
    if parts.text_encoder.config.vocab_size != len(parts.tokenizer):
        raise SystemExit(f"tokenizer has {len(parts.tokenizer)} tokens, text encoder {parts.text_encoder.config.vocab_size}")
    parts.vae = AutoencoderKL.from_pretrained(out / "vae").eval().requires_grad_(False)
    parts.vae_scale = float(parts.vae.config.scaling_factor)
    parts.text_encoder.eval().requires_grad_(False)
    if text_source != "trained":
        parts.text_encoder.save_pretrained(out / "text_encoder", safe_serialization=True)
    (out / "scheduler").mkdir(parents=True, exist_ok=True)
    sched_cfg = tiny.ZERO_SNR_SCHEDULER_CONFIG if zero_snr else tiny.SCHEDULER_CONFIG
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched_cfg, indent=1))
    (out / DEFAULTS_FILE).write_text(json.dumps(tiny.STORED_DEFAULTS, indent=1))

    captions = all_captions()
    with torch.no_grad():
        table = encode_prompts(parts, captions + [""])  # (49, L, D): the world has only 48 captions
    token_ids = parts.tokenizer(captions + [""], padding="max_length", max_length=parts.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt").input_ids
    text = parts.text_encoder
    if train_text:
        no_dropout(text)
        text.train().requires_grad_(True)
    text_ema = copy.deepcopy(text).eval().requires_grad_(False)
    index = {c: i for i, c in enumerate(captions)}

    torch.manual_seed(seed)
    unet_config = dict(tiny.UNET_CONFIG)
    if attention_head_dim:  # channels per attention head (diffusers' UNet3D reads attention_head_dim so)
        unet_config["attention_head_dim"] = attention_head_dim
    unet = UNet3DConditionModel(**unet_config)
    if frame_code:
        for layer in frame_code_layers(unet):
            add_frame_code(layer)
    no_dropout(unet)
    unet.train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    trained = list(unet.parameters()) + (list(text.parameters()) if train_text else [])
    opt = torch.optim.AdamW(trained, lr=lr, weight_decay=0.01)
    schedule = VPSchedule.from_scheduler_config(sched_cfg)
    alphas = schedule.alphas_cumprod
    snr = alphas / (1 - alphas)
    start, elapsed, running = 0, 0.0, None
    ckpt = checkpoint_dir / "unet-train.safetensors" if checkpoint_dir else None
    if ckpt is not None and ckpt.is_file():
        state = load_file(ckpt)
        meta = json.loads(ckpt.with_suffix(".json").read_text())
        if (meta["steps"] != steps or meta["batch"] != batch or meta["lr"] != lr or meta["seed"] != seed
                or meta.get("high_frac", 0.0) != high_frac or meta.get("high_from", 800) != high_from
                or meta.get("zero_snr", False) != zero_snr or meta.get("frame_code", False) != frame_code
                or [list(v) for v in meta.get("trail", [])] != [list(v) for v in trail]
                or meta.get("travel") != (list(travel) if travel else None)
                or meta.get("train_text", False) != train_text
                or meta.get("attention_head_dim") != attention_head_dim
                or meta.get("text_source", "random") != text_source or meta.get("x0_floor", 0.0) != x0_floor):
            raise SystemExit(f"{ckpt} belongs to another run ({meta}); delete it or pass its settings")
        unet.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("unet.")})
        ema.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("ema.")})
        if train_text:
            text.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("text.")})
            text_ema.load_state_dict({k[9:]: v for k, v in state.items() if k.startswith("text_ema.")})
        for i, p in enumerate(trained):
            if f"opt.{i}.exp_avg" in state:
                opt.state[p] = {"step": state[f"opt.{i}.step"], "exp_avg": state[f"opt.{i}.exp_avg"],
                                "exp_avg_sq": state[f"opt.{i}.exp_avg_sq"]}
        start, elapsed, running = meta["step"], meta["elapsed"], meta["running"]
        log(f"resumed from {ckpt} at step {start} ({elapsed:.0f}s trained)")

    def save_checkpoint(step: int) -> None:
        tensors = {f"unet.{k}": v.contiguous() for k, v in unet.state_dict().items()}
        tensors.update({f"ema.{k}": v.contiguous() for k, v in ema.state_dict().items()})
        if train_text:
            tensors.update({f"text.{k}": v.contiguous() for k, v in text.state_dict().items()})
            tensors.update({f"text_ema.{k}": v.contiguous() for k, v in text_ema.state_dict().items()})
        for i, p in enumerate(trained):
            st = opt.state.get(p)
            if st:
                tensors[f"opt.{i}.step"] = torch.as_tensor(st["step"]).reshape(())
                tensors[f"opt.{i}.exp_avg"] = st["exp_avg"]
                tensors[f"opt.{i}.exp_avg_sq"] = st["exp_avg_sq"]
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        tmp = ckpt.with_name(ckpt.name + ".tmp")
        save_file(tensors, tmp)
        meta = {"step": step, "steps": steps, "batch": batch, "lr": lr, "seed": seed, "running": running,
                "high_frac": high_frac, "high_from": high_from, "zero_snr": zero_snr,
                "frame_code": frame_code, "trail": [list(v) for v in trail],
                "travel": list(travel) if travel else None, "train_text": train_text,
                "attention_head_dim": attention_head_dim, "text_source": text_source, "x0_floor": x0_floor,
                "elapsed": elapsed + time.time() - t0}
        ckpt.with_suffix(".json.tmp").write_text(json.dumps(meta))
        tmp.replace(ckpt)
        ckpt.with_suffix(".json.tmp").replace(ckpt.with_suffix(".json"))

    phases = extend_phases(steps, lr, extend, extend_lr)
    t0 = time.time()
    total = phases[-1][0] + phases[-1][1]
    end = total if stop_after is None else min(total, stop_after)
    for step in range(start, end):
        gen = torch.Generator().manual_seed(1_000_003 * (seed + 2) + step)
        begin, length, peak = next(ph for ph in phases if step < ph[0] + ph[1])
        for g in opt.param_groups:
            g["lr"] = lr_at(step - begin, length, peak, warmup=30)
        # 1. data: fresh clips every step, encoded with the frozen VAE
        clips, caps = random_clips(batch, seed=10_000 * (seed + 1) + 5_000_000 + step)
        with torch.no_grad():
            x0 = encode_pixels(parts, clips, generator=gen)  # (B, C, F, h, w)
        ids = torch.tensor([index[c] for c in caps])
        ids = torch.where(torch.rand(batch, generator=gen) < drop, len(captions), ids)  # caption dropout
        cond = text(token_ids[ids]).last_hidden_state if train_text else table[ids]
        # 2. forward diffusion at uniform timesteps
        t = torch.randint(0, len(alphas), (batch,), generator=gen)
        if high_frac > 0:
            high = torch.randint(high_from, len(alphas), (batch,), generator=gen)
            t = torch.where(torch.rand(batch, generator=gen) < high_frac, high, t)
        noise = torch.randn(x0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        # 3. loss on the schedule's target. In x0 terms: epsilon with min-SNR-gamma weights (Hang et al. 2023) is
        # min(snr, g), which all but ignores the noisiest steps (x0 weight ~snr); v-prediction gets the truncated
        # "snr + 1" weight min(snr + 1, g), so at pure noise the x0 error still counts 1/g of the most: that is
        # where the caption alone must decide where the object is and which way it goes.
        pred = unet(xt, t, encoder_hidden_states=cond).sample
        target = schedule.training_target(x0, noise, t)
        if schedule.prediction_type == "v_prediction":
            w = torch.clamp(snr[t] + 1, max=snr_gamma) / (snr[t] + 1)
        else:
            w = torch.clamp(torch.clamp(snr[t], max=snr_gamma), min=x0_floor) / snr[t]
        loss = (w * (pred - target).pow(2).mean(dim=(1, 2, 3, 4))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        decay = min(0.998, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters(), strict=True):
                pe.lerp_(p, 1 - decay)
            if train_text:
                for pe, p in zip(text_ema.parameters(), text.parameters(), strict=True):
                    pe.lerp_(p, 1 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 20 == 0 or step == total - 1:
            log(f"unet step {step}/{total} loss {loss.item():.4f} avg {running:.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"({elapsed + time.time() - t0:.0f}s)")
        if ckpt is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == end):
            save_checkpoint(step + 1)
        if (step + 1) % 100 == 0 or step + 1 == end:
            ema.save_pretrained(out / "unet", safe_serialization=True)
            if train_text:
                text_ema.save_pretrained(out / "text_encoder", safe_serialization=True)
        if eval_every and ((step + 1) % eval_every == 0):
            quick_eval(out, ema, step + 1, eval_steps, guidance, text_ema)
    # shipped in float16 (half the size; t2vturbo loads it as float32, and the evaluation uses these weights)
    copy.deepcopy(ema).half().save_pretrained(out / "unet", safe_serialization=True)
    _update_stats(out, {"unet_steps": steps, "unet_extend_steps": [ph[1] for ph in phases[1:]],
                        "unet_extend_lr": [ph[2] for ph in phases[1:]],
                        "unet_trained_steps": end, "unet_high_noise_frac": high_frac,
                        "unet_high_noise_from": high_from, "unet_zero_snr": zero_snr, "unet_frame_code": frame_code,
                        "world_trail": [list(v) for v in trail], "world_travel": list(travel) if travel else None,
                        "unet_stopped_after": stop_after, "unet_batch": batch, "unet_lr": lr,
                        "unet_seconds": round(elapsed + time.time() - t0, 1), "unet_final_loss_avg": running,
                        "unet_params": sum(p.numel() for p in unet.parameters()),
                        "unet_x0_floor": x0_floor,
                        **({"text_encoder": f"trained with the UNet from build_tiny_teacher({seed})"} if train_text
                           else {} if text_source == "trained"
                           else {"text_encoder": f"random frozen, build_tiny_teacher({seed})"})})
    log("unet done")


def extend_phases(steps: int, lr: float, extend: int | tuple[int, ...],
                  extend_lr: float | tuple[float | None, ...] | None) -> list[tuple[int, int, float]]:
    """The cosine phases (first step, length, peak lr) of a UNet run: ``steps`` at ``lr``, then each ``extend``."""
    ext = [extend] if isinstance(extend, int) else list(extend)
    ext = [n for n in ext if n > 0]
    lrs = list(extend_lr) if isinstance(extend_lr, (tuple, list)) else [extend_lr]
    if len(lrs) == 1:  # one lr (or None: the first phase's) for every phase
        lrs = lrs * len(ext)
    if len(lrs) != len(ext):
        raise SystemExit(f"--unet-extend has {len(ext)} phases but --unet-extend-lr {len(lrs)} values: give one lr, "
                         "or one per phase")
    phases, begin = [(0, steps, lr)], steps
    for n, peak in zip(ext, lrs, strict=True):
        phases.append((begin, n, peak or lr))
        begin += n
    return phases


@torch.no_grad()
def quick_eval(out: Path, unet, step: int, steps: int, guidance: float, text_encoder=None) -> None:
    """DDIM + CFG on the 48 captions with the current EMA weights (a progress check, not the shipped figure)."""
    from t2vturbo.sampling import sample_video
    from t2vturbo.teachers import load_diffusers_teacher

    parts = load_diffusers_teacher(str(out))
    parts.unet = unet
    if text_encoder is not None:
        parts.text_encoder = text_encoder
    t0 = time.time()
    caps = all_captions()
    res = sample_video(parts, caps, steps=steps, guidance=guidance, mode="teacher", frames=tiny.FRAMES,
                       height=tiny.HEIGHT, width=tiny.WIDTH, seed=[90_000 + i for i in range(len(caps))])
    score = judge(res.videos, caps)
    log(f"quick eval at step {step}: DDIM {steps} + CFG {guidance}: colour {score['colour']:.2f} shape "
        f"{score['shape']:.2f} motion {score['motion']:.2f} all {score['all']:.2f} ({time.time() - t0:.0f}s)")
    try:
        import torchvision

        torchvision.utils.save_image(res.videos[:12].flatten(0, 1), f"/tmp/tiny_teacher_step{step}.png", nrow=tiny.FRAMES)
    except Exception:  # noqa: BLE001 - a preview is optional
        pass


# ---------------------------------------------------------------------------------------------------------- eval


def evaluate(out: Path, seed: int, guidance: float, steps_list: list[int], repeats: int) -> dict:
    """DDIM + CFG on every caption (x ``repeats`` seeds), judged; merged into training_stats.json."""
    from t2vturbo.tiny.evaluate import Variant, generate, score_videos

    if out.resolve() != tiny.TEACHER_DIR.resolve():
        raise SystemExit("--stage eval evaluates the shipped teacher: copy OUT into t2vturbo/tiny/weights/teacher first")
    results = {}
    for steps in steps_list:
        videos, caps, spv = generate(Variant("teacher", "teacher", steps, guidance), all_captions(),
                                     list(range(seed, seed + repeats)))
        row = score_videos(videos, caps, {})
        row["seconds_per_video"] = spv
        results[f"ddim{steps}_cfg{guidance}"] = row
        log(f"eval DDIM {steps} steps, CFG {guidance}: {row}")
    stats_path = out / "training_stats.json"
    previous = json.loads(stats_path.read_text()).get("eval", {}) if stats_path.is_file() else {}
    _update_stats(out, {"eval": {**previous, **results}})
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=["vae", "text", "unet", "eval", "all"], default="all")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vae-steps", type=int, default=0)
    ap.add_argument("--vae-batch", type=int, default=12)
    ap.add_argument("--vae-lr", type=float, default=2e-3)
    ap.add_argument("--kl-weight", type=float, default=1e-4)
    ap.add_argument("--vae-focus-steps", type=int, default=0)
    ap.add_argument("--vae-focus-weight", type=float, default=5.0)
    ap.add_argument("--vae-resume", action="store_true", help="skip phase 1: start phase 2 from OUT/vae")
    ap.add_argument("--vae-init", choices=["analytic", "random"], default="analytic")
    ap.add_argument("--vae-decoder-only", action="store_true", help="train only the decoder (latents unchanged)")
    ap.add_argument("--text-steps", type=int, default=400)
    ap.add_argument("--text-lr", type=float, default=3e-3)
    ap.add_argument("--text-weights", default="", help="KIND:W,... code weights of --stage text, e.g. direction:3")
    ap.add_argument("--text-source", choices=["trained", "random"], default="trained",
                    help="the UNet's frozen text encoder: the one --stage text wrote, or the random init")
    ap.add_argument("--x0-floor", type=float, default=0.0, help="floor of the x0-space loss weight at high noise")
    ap.add_argument("--unet-steps", type=int, default=250)
    ap.add_argument("--unet-batch", type=int, default=8)
    ap.add_argument("--unet-lr", type=float, default=1e-3)
    ap.add_argument("--unet-extend", type=int, nargs="+", default=[0],
                    help="after --unet-steps, this many more steps on a second cosine schedule (resumes a finished "
                         "run); several numbers run several phases one after another")
    ap.add_argument("--unet-extend-lr", type=float, nargs="+", default=None,
                    help="peak lr of each --unet-extend phase (one value: all phases)")
    ap.add_argument("--unet-stop-after", type=int, default=None,
                    help="stop after this many steps of a --unet-steps schedule (what the shipped teacher did)")
    ap.add_argument("--checkpoint-dir", type=Path, default=Path("runs/tiny-teacher-train"),
                    help="where the UNet stage keeps its resumable checkpoint (rerun the same command to resume)")
    ap.add_argument("--eval-every", type=int, default=0, help="quick DDIM-25 judge check every N UNet steps")
    ap.add_argument("--high-noise-frac", type=float, default=0.0,
                    help="fraction of samples whose timestep is drawn from [--high-noise-from, 1000)")
    ap.add_argument("--high-noise-from", type=int, default=800)
    ap.add_argument("--zero-snr", action="store_true",
                    help="train on the zero-terminal-SNR v-prediction schedule (tiny.ZERO_SNR_SCHEDULER_CONFIG)")
    ap.add_argument("--frame-code", action="store_true",
                    help="initialise two temporal convolutions to write a code of the frame index (add_frame_code)")
    ap.add_argument("--trail", default="", help="motion trail as BEHIND:OPACITY,... e.g. 3:0.5,6:0.25 (world.TRAIL)")
    ap.add_argument("--travel", default="", help="LO:HI pixels the object travels, starting anywhere (world.TRAVEL)")
    ap.add_argument("--train-text", action="store_true", help="train the text encoder with the UNet")
    ap.add_argument("--attention-head-dim", type=int, default=None,
                    help="channels per attention head (UNET_CONFIG: 8, i.e. 4 / 8 / 16 heads at the three levels)")
    ap.add_argument("--caption-dropout", type=float, default=0.1)
    ap.add_argument("--snr-gamma", type=float, default=5.0)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--eval-steps", type=int, nargs="+", default=[4, 50])
    ap.add_argument("--eval-repeats", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    trail = tuple(tuple(float(x) for x in v.split(":")) for v in args.trail.split(",") if v)
    world.TRAIL = trail
    travel = tuple(float(x) for x in args.travel.split(":")) if args.travel else None
    world.TRAVEL = travel
    args.out.mkdir(parents=True, exist_ok=True)
    if args.stage in ("vae", "all"):
        train_vae(args.out, args.seed, args.vae_steps, args.vae_batch, args.vae_lr, args.kl_weight,
                  args.vae_focus_steps, args.vae_focus_weight, args.vae_resume, args.vae_init, args.vae_decoder_only)
    if args.stage in ("text", "all"):
        weights = {k: float(v) for k, v in (kv.split(":") for kv in args.text_weights.split(",") if kv)}
        train_text(args.out, args.seed, args.text_steps, args.text_lr, weights)
    if args.stage in ("unet", "all"):
        train_unet(args.out, args.seed, args.unet_steps, args.unet_batch, args.unet_lr, args.caption_dropout,
                   args.snr_gamma, args.unet_stop_after, args.checkpoint_dir, eval_every=args.eval_every,
                   guidance=args.guidance, extend=tuple(args.unet_extend),
                   extend_lr=tuple(args.unet_extend_lr) if args.unet_extend_lr else None,
                   high_frac=args.high_noise_frac, high_from=args.high_noise_from, zero_snr=args.zero_snr,
                   frame_code=args.frame_code, trail=trail, travel=travel, train_text=args.train_text,
                   attention_head_dim=args.attention_head_dim, text_source=args.text_source,
                   x0_floor=args.x0_floor)
    if args.stage in ("eval", "all"):
        evaluate(args.out, args.seed, args.guidance, args.eval_steps, args.eval_repeats)


if __name__ == "__main__":
    main()
