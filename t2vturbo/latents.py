"""Prepared datasets: ``t2vturbo prepare`` encodes each clip's window(s) with the teacher's VAE and each caption
with its text encoder once, and ``data.source: latents`` trains from what it wrote, never building the text
encoder nor keeping the VAE's encoder.

A prepared folder holds:

- ``prepare.json``: the settings it was made with (teacher, clip shape, rate, windows, seed, source); a second
  ``prepare`` into the folder must match them, and resumes;
- ``shard-00000.safetensors`` ...: each the posterior mean and std of its clips' windows (``mean.K`` / ``std.K``,
  the network's latent layout) and the text-encoder states of their captions (``text.C``, trailing all-zero
  token rows dropped), with a JSON description of every sample and every clip it could not read in its
  metadata. Shard ``s`` holds clips ``[s * shard_clips, (s + 1) * shard_clips)`` of the caption table; it is
  written whole (a temporary file renamed into place), so a killed run leaves whole shards only and the next
  one writes the others. Under ``torchrun`` / ``accelerate launch`` process ``r`` of ``n`` writes shards
  ``s % n == r``;
- ``text-extra.safetensors``: the states of the empty prompt and of ``sample.prompts`` (the step's
  unconditional branch and the end-of-run samples);
- ``index.json``: written last, by whichever process sees every shard there: the shards, their sample counts,
  the clips that could not be read (with why) and the shapes. Training refuses a folder without it.

The posterior is stored, not a sample of it: the step draws ``mean + std * eps`` with the random numbers
``encode_video`` would have used, so step 1's loss from latents equals the pixel path's for the same clips.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .data import Clip, Encoded, folder_clips, mix_seed
from .errors import ConfigError, VideoReadError

FORMAT = "t2vturbo-latents/1"
INDEX_FILE = "index.json"
SETTINGS_FILE = "prepare.json"
EXTRA_TEXT_FILE = "text-extra.safetensors"
META_KEY = "t2vturbo"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def window_start(seed: int, clip: int, window: int) -> float:
    """Where in [0, 1] of a clip's free range its ``window``-th prepared window starts (from (seed, clip,
    window): the same on every run and process)."""
    g = torch.Generator().manual_seed(mix_seed(seed, clip, window, 3))
    return float(torch.rand((), generator=g))


def prepare_settings(recipe, windows: int, shard_clips: int) -> dict:
    d, v = recipe.data, recipe.video
    return {"format": FORMAT, "teacher": recipe.model.teacher, "dtype": recipe.model.dtype,
            "frames": v.frames, "height": v.height, "width": v.width, "sample_fps": float(d.sample_fps or v.fps),
            "window_start": d.window_start, "windows": windows, "shard_clips": shard_clips, "seed": recipe.train.seed,
            "data_path": str(Path(d.path).expanduser().resolve()) if d.path else None, "captions": d.captions}


@dataclass
class PreparePlan:
    """What ``prepare`` will do: the clips, the shards, those already written."""

    out: Path
    settings: dict
    clips: list[Clip]
    done: set[int]

    @property
    def shard_clips(self) -> int:
        return self.settings["shard_clips"]

    @property
    def num_shards(self) -> int:
        return -(-len(self.clips) // self.shard_clips)

    def shard_clip_range(self, shard: int) -> range:
        return range(shard * self.shard_clips, min(len(self.clips), (shard + 1) * self.shard_clips))

    def describe(self, probe: bool = True) -> list[str]:
        """The dry run's lines: the dataset, the shards (written / to write) and, with ``probe``, the clips that
        will be skipped (each file's header is read; nothing is decoded)."""
        s = self.settings
        lines = [f"dataset: {len(self.clips)} clips from {s['data_path']} x {s['windows']} window(s) of "
                 f"{s['frames']} frames at {s['sample_fps']:g} fps, {s['height']}x{s['width']}",
                 f"teacher: {s['teacher']} ({s['dtype']}): its VAE encoder and text encoder run once here",
                 f"output: {self.out}: {self.num_shards} shard(s) of up to {self.shard_clips} clips; "
                 f"{len(self.done)} already written, {self.num_shards - len(self.done)} to write"]
        if probe:
            bad = [(c.path, why) for c in self.clips if (why := probe_clip(c.path, s["frames"], s["sample_fps"]))]
            lines.append(f"will skip {len(bad)} clip(s)" + (":" if bad else ""))
            lines += [f"  {path}: {why}" for path, why in bad[:20]]
            if len(bad) > 20:
                lines.append(f"  ... and {len(bad) - 20} more")
        return lines


def probe_clip(path: str, frames: int, fps: float) -> str | None:
    """Why a clip will be skipped (missing, unreadable, no video, too short for ``frames`` frames at its own rate
    or less), read from its header only; None if it looks readable."""
    from .video import _duration, _opened, window_rate

    p = Path(path)
    if not p.is_file():
        return "file not found"
    try:
        with _opened(p) as (container, stream):
            window_rate(_duration(container, stream), frames, fps, float(stream.average_rate or 4 * fps), path)
    except VideoReadError as err:
        return str(err)
    return None


def plan_prepare(recipe, out: str | Path, windows: int = 1, shard_clips: int = 64) -> PreparePlan:
    """The clips and shards of ``t2vturbo prepare`` for ``recipe`` into ``out``; refuses a folder prepared with
    other settings (one line)."""
    d = recipe.data
    if d.source != "folder":
        raise ConfigError(f"t2vturbo prepare reads data.source folder (videos + a captions table, e.g. WebVid's "
                          f"CSV); this recipe has data.source {d.source}: set data.source=folder data.path=DIR")
    if windows < 1 or shard_clips < 1:
        raise ConfigError(f"--windows and --shard-clips must be at least 1 (got {windows}, {shard_clips})")
    root = Path(d.path).expanduser()
    clips = folder_clips(root, d.captions)
    out = Path(out)
    settings = prepare_settings(recipe, windows, shard_clips)
    existing = out / SETTINGS_FILE
    if existing.is_file():
        try:
            before = json.loads(existing.read_text())
        except json.JSONDecodeError:
            raise ConfigError(f"{existing} is not JSON; remove the folder {out} or choose another --out") from None
        before = {"window_start": "random", **before}  # made before data.window_start existed: random starts
        changed = [k for k in settings if before.get(k) != settings[k]]
        if changed:
            k = changed[0]
            raise ConfigError(f"{out} was prepared with {k}={before.get(k)!r}, not {settings[k]!r}; prepare into "
                              "a new --out, or run with the settings it was made with to finish it")
    elif out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not a prepared dataset (no {SETTINGS_FILE}); choose another --out")
    done = {s for s in range(-(-len(clips) // shard_clips)) if (out / shard_name(s)).is_file()}
    return PreparePlan(out, settings, clips, done)


def _strip_padding(states: torch.Tensor) -> torch.Tensor:
    """(L, D) -> the rows up to the last one that is not all zeros (Wan's UMT5 states are zero past the prompt;
    CLIP's are not, and stay whole)."""
    nonzero = states.abs().sum(dim=-1) != 0
    keep = int(nonzero.nonzero().max()) + 1 if nonzero.any() else 1
    return states[:keep]


def _pad(states: torch.Tensor, length: int) -> torch.Tensor:
    if states.shape[0] >= length:
        return states
    return torch.cat([states, states.new_zeros(length - states.shape[0], states.shape[1])])


def _write_safetensors(tensors: dict[str, torch.Tensor], path: Path, meta: dict) -> None:
    from .safeio import save_safetensors

    save_safetensors({k: v.contiguous() for k, v in tensors.items()}, path, {META_KEY: json.dumps(meta)})


def write_shard(teacher, plan: PreparePlan, shard: int, log=print) -> dict:
    """Encode shard ``shard``'s clips (each window read as the folder stream reads one) and write it whole."""
    from .video import read_window

    s = plan.settings
    tensors: dict[str, torch.Tensor] = {}
    samples, bad, captions = [], [], {}
    text_len = 0
    for i in plan.shard_clip_range(shard):
        clip = plan.clips[i]
        windows = []
        try:
            for j in range(s["windows"]):
                where = window_start(s["seed"], i, j)
                windows.append((j, read_window(clip.path, s["frames"], s["sample_fps"], s["height"], s["width"],
                                               start=lambda latest, w=where: w * latest,
                                               align=s["window_start"])))
        except VideoReadError as err:
            bad.append({"clip": i, "path": clip.path, "why": str(err)})
            log(f"skipping clip {i} ({clip.path}): {err}")
            continue
        if clip.caption not in captions:
            c = captions[clip.caption] = len(captions)
            with torch.no_grad():
                states = teacher.encode_text([clip.caption])[0]
            text_len = max(text_len, states.shape[0])
            tensors[f"text.{c}"] = _strip_padding(states).cpu()
        for j, window in windows:
            with torch.no_grad():
                mean, std = teacher.encode_moments(window.pixels[None].to(teacher.device))
            k = len(samples)
            tensors[f"mean.{k}"], tensors[f"std.{k}"] = mean[0].cpu(), std[0].cpu()
            samples.append({"clip": i, "window": j, "caption": captions[clip.caption], "fps": window.fps,
                            "start": window.times[0], "path": clip.path})
    meta = {"format": FORMAT, "shard": shard, "samples": samples, "captions": list(captions), "bad": bad,
            "text_len": text_len}
    _write_safetensors(tensors, plan.out / shard_name(shard), meta)
    return meta


def read_meta(path: Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})[META_KEY])
    except Exception as err:  # noqa: BLE001 - a damaged file of any kind: one line
        raise ConfigError(f"{path} is not a readable prepared shard ({type(err).__name__}); delete it and run "
                          "t2vturbo prepare again to rewrite it") from None
    return meta


def write_extra_text(teacher, out: Path, prompts: list[str]) -> None:
    prompts = list(dict.fromkeys(["", *prompts]))
    with torch.no_grad():
        states = teacher.encode_text(prompts)
    _write_safetensors({f"text.{i}": s.cpu() for i, s in enumerate(states)}, out / EXTRA_TEXT_FILE,
                       {"prompts": prompts})


def write_index(plan: PreparePlan) -> dict:
    shards, bad, clips_with_samples = [], [], 0
    samples = 0
    latent_shape, text_len, text_dim = None, 0, None
    from safetensors import safe_open

    for s in range(plan.num_shards):
        path = plan.out / shard_name(s)
        meta = read_meta(path)
        shards.append({"file": path.name, "samples": len(meta["samples"]), "clips": len(plan.shard_clip_range(s))})
        bad += meta["bad"]
        samples += len(meta["samples"])
        clips_with_samples += len({x["clip"] for x in meta["samples"]})
        text_len = max(text_len, meta["text_len"])
        if latent_shape is None and meta["samples"]:
            with safe_open(str(path), framework="pt") as fh:
                latent_shape = list(fh.get_slice("mean.0").get_shape())
                text_dim = fh.get_slice("text.0").get_shape()[-1]
    if not samples:
        raise ConfigError(f"no clip of {len(plan.clips)} could be read (first: {bad[0]['why'] if bad else '?'}); "
                          "check the videos or lower video.frames / data.sample_fps")
    index = {"format": FORMAT, "settings": plan.settings, "shards": shards, "samples": samples,
             "clips": clips_with_samples, "bad": bad, "latent_shape": latent_shape, "text_shape": [text_len, text_dim],
             "extra_text": EXTRA_TEXT_FILE}
    from .safeio import save_json

    save_json(index, plan.out / INDEX_FILE)
    return index


def prepare_dataset(recipe, out: str | Path, windows: int = 1, shard_clips: int = 64, rank: int = 0,
                    world_size: int = 1, log=print, load_teacher=None) -> dict | None:
    """``t2vturbo prepare``: write the shards this process owns (those not yet written), then, if every shard is
    there, the extra text and the index. Returns the index when this process wrote it."""
    from .names import process_device, torch_dtype
    from .safeio import save_json

    plan = plan_prepare(recipe, out, windows, shard_clips)
    plan.out.mkdir(parents=True, exist_ok=True)
    if not (plan.out / SETTINGS_FILE).is_file():
        save_json(plan.settings, plan.out / SETTINGS_FILE)
    mine = [s for s in range(plan.num_shards) if s % world_size == rank and s not in plan.done]
    log(f"prepare: {len(plan.clips)} clips in {plan.num_shards} shard(s); {len(plan.done)} already written; "
        f"this process writes {len(mine)}")
    teacher = None

    def teacher_once():
        nonlocal teacher
        if teacher is None:
            from .teachers import load_teacher as real_loader

            teacher = (load_teacher or real_loader)(recipe.model.teacher, device=process_device(recipe.model.device),
                                                    dtype=torch_dtype(recipe.model.dtype, "model.dtype"))
        return teacher

    for n, s in enumerate(mine, 1):
        meta = write_shard(teacher_once(), plan, s, log=log)
        log(f"shard {s} written ({len(meta['samples'])} windows, {len(meta['bad'])} clips skipped; {n}/{len(mine)})")
    if any(not (plan.out / shard_name(s)).is_file() for s in range(plan.num_shards)):
        log("other processes are still writing shards; the last one to finish writes the index")
        return None
    write_extra_text(teacher_once(), plan.out, list(recipe.sample.prompts))
    index = write_index(plan)
    log(f"index written: {index['samples']} windows of {index['clips']} clips, {len(index['bad'])} clips skipped "
        f"-> {plan.out / INDEX_FILE}")
    return index


# ---------------------------------------------------------------------------------------------------- training
def read_index(path: str | Path) -> dict:
    root = Path(path).expanduser()
    index_path = root / INDEX_FILE
    if not index_path.is_file():
        raise ConfigError(f"data.path: {root} has no {INDEX_FILE}; write it with `t2vturbo prepare RECIPE --out "
                          f"{root}` (or finish an interrupted prepare by running it again)")
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError:
        raise ConfigError(f"{index_path} is not JSON; run t2vturbo prepare into {root} again") from None
    if index.get("format") != FORMAT:
        raise ConfigError(f"{index_path} has format {index.get('format')!r}, not {FORMAT!r}; prepare it again")
    return index


def check_matches(index: dict, recipe) -> None:
    """The recipe must train what was prepared: the same teacher, clip shape and rate (one line naming the key)."""
    s = index["settings"]
    v = recipe.video
    wanted = {"model.teacher": (recipe.model.teacher, s["teacher"]), "video.frames": (v.frames, s["frames"]),
              "video.height": (v.height, s["height"]), "video.width": (v.width, s["width"]),
              "data.sample_fps": (float(recipe.data.sample_fps or v.fps), s["sample_fps"])}
    for key, (have, made) in wanted.items():
        if have != made:
            raise ConfigError(f"{key} is {have!r} but the prepared dataset was made with {made!r}; set {key}="
                              f"{made} or prepare the data again with this recipe")


class LatentStream:
    """Batches from a prepared folder: shuffled epochs over its clips, sharded by rank; each clip gives one of its
    prepared windows (drawn from (seed, epoch, clip)) as an :class:`Encoded` (posterior mean and std, text
    states). Batch ``position`` on rank ``r`` is a pure function of (seed, position, r): a resumed run reads what
    the straight run would have read. Reading is a memory-mapped slice of a shard: no workers needed."""

    def __init__(self, root: str, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1, log=print,
                 recipe=None):
        self.root = Path(root).expanduser()
        self.index = read_index(self.root)
        if recipe is not None:
            check_matches(self.index, recipe)
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world_size
        self.log = log
        self.text_len = self.index["text_shape"][0]
        by_clip: dict[int, list[tuple[str, int, dict]]] = {}
        self.caption_of: dict[tuple[str, int], str] = {}
        for shard in self.index["shards"]:
            meta = read_meta(self.root / shard["file"])
            for k, sample in enumerate(meta["samples"]):
                by_clip.setdefault(sample["clip"], []).append((shard["file"], k, sample))
            for c, caption in enumerate(meta["captions"]):
                self.caption_of[(shard["file"], c)] = caption
        self.clips = [by_clip[c] for c in sorted(by_clip)]
        if not self.clips:
            raise ConfigError(f"{self.root} holds no prepared window; run t2vturbo prepare again")
        if self.index["bad"]:
            log(f"prepared data: {len(self.index['bad'])} clip(s) were unreadable when it was prepared "
                f"(listed in {self.root / INDEX_FILE}) and are not in it")
        self.position = 0
        self.skipped: list[str] = []
        self.batch_fps: list[float] | None = None
        self._open: dict[str, object] = {}

    def text_table(self) -> dict[str, torch.Tensor]:
        """The empty prompt's and sample.prompts' states, stored by prepare: what the teacher's encode_text is
        answered from while training from latents."""
        from safetensors import safe_open

        path = self.root / self.index["extra_text"]
        with safe_open(str(path), framework="pt") as fh:
            prompts = json.loads(fh.metadata()[META_KEY])["prompts"]
            return {p: fh.get_tensor(f"text.{i}") for i, p in enumerate(prompts)}

    def _shard(self, name: str):
        from safetensors import safe_open

        if name not in self._open:
            self._open[name] = safe_open(str(self.root / name), framework="pt")
        return self._open[name]

    def locate(self, k: int) -> tuple[list, int]:
        n = len(self.clips)
        epoch, i = divmod(k * self.world + self.rank, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch)))
        index = int(perm[i])
        windows = self.clips[index]
        return windows, mix_seed(self.seed, epoch, index, 1) % len(windows)

    def next_batch(self) -> tuple[Encoded, list[str]]:
        means, stds, texts, caps, rates = [], [], [], [], []
        for _ in range(self.batch_size):
            windows, w = self.locate(self.position)
            self.position += 1
            name, k, sample = windows[w]
            fh = self._shard(name)
            means.append(fh.get_tensor(f"mean.{k}"))
            stds.append(fh.get_tensor(f"std.{k}"))
            texts.append(_pad(fh.get_tensor(f"text.{sample['caption']}"), self.text_len))
            caps.append(self.caption_of[(name, sample["caption"])])
            rates.append(sample["fps"])
        self.batch_fps = rates
        return Encoded(torch.stack(means), torch.stack(stds), torch.stack(texts)), caps

    def captions(self) -> list[str]:
        return list(dict.fromkeys(self.caption_of.values()))

    def state_dict(self) -> dict:
        return {"position": self.position, "skipped": []}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])
