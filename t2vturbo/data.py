"""Training data: a folder of captioned videos (WebVid-style) or the procedural tiny world.

Both are deterministic streams: batch ``position`` on rank ``r`` is a pure function of (seed, position, r), so
a resumed run reads exactly what the uninterrupted run would have read.
"""

from __future__ import annotations

import csv
import functools
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import ConfigError, VideoReadError


@dataclass
class Encoded:
    """A batch as a prepared dataset stores it (``data.source: latents``): the VAE posterior's mean and std
    (B, C, F', h, w) and the captions' text-encoder states (B, L, D), in place of pixels."""

    mean: torch.Tensor
    std: torch.Tensor
    text: torch.Tensor

    def __len__(self) -> int:
        return self.mean.shape[0]


@dataclass
class Clip:
    path: str
    caption: str


def read_caption_table(path: Path, root: Path, limit: int | None = None) -> list[Clip]:
    """Rows of (path, caption) from CSV (header with ``path``/``caption``; WebVid's ``videoid``/``name`` too) or JSONL;
    with ``limit``, only the first ``limit`` rows are read."""
    rows: list[Clip] = []
    if path.suffix == ".jsonl":
        with path.open() as fh:
            for i, line in enumerate(fh.read().splitlines() if limit is None else fh, 1):
                if limit is not None and len(rows) >= limit:
                    break
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    rows.append(Clip(str(obj["path"]), str(obj["caption"])))
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise ConfigError(f"{path}:{i}: expected a JSON object with 'path' and 'caption'") from None
    elif path.suffix in (".csv", ".tsv"):
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if path.suffix == ".tsv" else ",")
            fields = set(reader.fieldnames or [])
            if {"path", "caption"} <= fields:
                pk, ck = "path", "caption"
            elif {"videoid", "name"} <= fields:
                pk, ck = "videoid", "name"
            else:
                raise ConfigError(f"{path}: needs columns path,caption (or WebVid's videoid,name); found {sorted(fields)}")
            for row in reader:
                if limit is not None and len(rows) >= limit:
                    break
                p = row[pk]
                if pk == "videoid" and not Path(p).suffix:
                    p = f"{p}.mp4"
                rows.append(Clip(p, row[ck]))
    else:
        raise ConfigError(f"captions file {path} must be .csv, .tsv or .jsonl")
    if not rows:
        raise ConfigError(f"captions file {path} lists no videos")
    for r in rows:
        if not Path(r.path).is_absolute():
            r.path = str(root / r.path)
    return rows


def captions_file(root: Path, captions: str | None) -> Path | None:
    """``data.captions``, or else the captions.csv / .jsonl / .tsv in the data folder ``root``; None if neither."""
    if captions is not None:
        return Path(captions)
    from .recipe_checks import CAPTION_FILES

    return next((root / n for n in CAPTION_FILES if (root / n).is_file()), None)


def caption_sidecars(root: Path):
    """(video, its caption sidecar) under ``root``, every folder down, in path order: ``NAME.txt`` beside
    ``NAME.mp4`` (video2dataset's ``files`` output, and what ``t2vturbo sample`` writes); videos without one are
    yielded with None."""
    from .video import VIDEO_SUFFIXES

    for video in sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()):
        side = video.with_suffix(".txt")
        yield video, (side if side.is_file() else None)


def folder_clips(root: Path, captions: str | None, limit: int | None = None, log=None) -> list[Clip]:
    """A folder's clips: from ``data.captions`` or the folder's captions table, else from each video's caption
    sidecar (videos without one are left out, and counted in ``log``). One line if there are none."""
    table = captions_file(root, captions)
    if table is not None:
        return read_caption_table(table, root, limit)
    clips, uncaptioned = [], 0
    for video, side in caption_sidecars(root):
        caption = side.read_text(encoding="utf-8", errors="replace").strip() if side else ""
        if caption:
            clips.append(Clip(str(video), caption))
            if limit is not None and len(clips) >= limit:
                break
        else:
            uncaptioned += 1
    if not clips:
        raise ConfigError(f"data.captions not set and {root} has no captions.csv / .jsonl / .tsv and no video with a "
                          "caption beside it (NAME.txt next to NAME.mp4): add a table (columns path, caption), set "
                          "data.captions=FILE, or write the sidecars")
    if uncaptioned and log is not None:
        log(f"{uncaptioned} video(s) under {root} have no caption (NAME.txt beside NAME.mp4, empty or missing) and are "
            "left out")
    return clips


def example_caption(recipe) -> str | None:
    """A caption of the recipe's own data, to suggest as a prompt: the tiny world's first caption, or the first
    caption of a folder's captions file (only its first row is read; no video, no model). None if unreadable."""
    if recipe.data.source == "tiny-world":
        from .tiny.world import all_captions

        return all_captions()[0]
    if not recipe.data.path:
        return None
    try:
        root = Path(recipe.data.path).expanduser()
        rows = folder_clips(root, recipe.data.captions, limit=1)
    except (ConfigError, OSError, UnicodeDecodeError, csv.Error):
        return None
    caption = " ".join(rows[0].caption.split())
    return caption or None


def fit_clip(video: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
    """(T, 3, H, W) in [0, 1] -> (frames, 3, height, width): evenly strided frames, resize short side, centre crop."""
    t = video.shape[0]
    if t < frames:
        idx = torch.arange(frames).clamp(max=t - 1)  # repeat the last frame of a short clip
    else:
        idx = (torch.arange(frames) * (t / frames)).long()
    v = video[idx].float()
    h, w = v.shape[-2:]
    scale = max(height / h, width / w)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    if (nh, nw) != (h, w):
        v = F.interpolate(v, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (nh - height) // 2, (nw - width) // 2
    return v[..., top : top + height, left : left + width].clamp(0, 1)


def mix_seed(*xs: int) -> int:
    """A 63-bit seed from a few integers (splitmix-style, stable across runs and platforms)."""
    h = 0x9E3779B97F4A7C15
    for x in xs:
        h = (h ^ (int(x) + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2))) & 0xFFFFFFFFFFFFFFFF
        h = (h * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


class _ClipWindows(torch.utils.data.Dataset):
    """Position k of a rank's stream -> (pixels, caption, fps, None), or (None, path, None, why) for a clip that
    cannot be read: a pure function of (seed, k, rank), so any worker can read any position."""

    def __init__(self, stream: FolderStream):
        self.clips, self.frames, self.height, self.width, self.fps = (stream.clips, stream.frames, stream.height,
                                                                      stream.width, stream.fps)
        self.seed, self.rank, self.world, self.align = stream.seed, stream.rank, stream.world, stream.align

    def locate(self, k: int) -> tuple[Clip, float]:
        """The clip at this rank's position ``k``, and where in [0, 1] of its free range its window starts."""
        n = len(self.clips)
        epoch, i = divmod(k * self.world + self.rank, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch)))
        index = int(perm[i])
        where = float(torch.rand((), generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch, index, 1))))
        return self.clips[index], where

    def __getitem__(self, k: int):
        from .video import read_window

        clip, where = self.locate(k)
        try:
            window = read_window(clip.path, self.frames, self.fps, self.height, self.width,
                                 start=lambda latest: where * latest, align=self.align)
        except VideoReadError as err:
            return None, clip.path, None, str(err)
        return window.pixels, clip.caption, window.fps, None


class _From(torch.utils.data.Sampler):
    """Positions start, start + 1, ... (a stream has no end)."""

    def __init__(self, start: int):
        self.start = start

    def __iter__(self):
        return itertools.count(self.start)


def _loader_worker(idle: bool, _worker: int) -> None:
    """A loader worker's setup. Its own torch ops run on one thread. ``idle`` (training on the CPU, where the
    workers share the cores with the model): the worker runs at idle priority (Linux ``SCHED_IDLE``, elsewhere nice
    19), so it never takes a core from the model, and decodes with FFmpeg's threads on the cycles the model leaves.
    Otherwise (beside a GPU step) it decodes on one thread: the workers are the parallelism."""
    from .video import set_decoder_threads

    torch.set_num_threads(1)
    if idle:
        lower_priority()
    set_decoder_threads(0 if idle else 1)


def worker_init(idle: bool):
    """The DataLoader ``worker_init_fn`` of a stream whose workers run beside a CPU model (``idle``) or a GPU one."""
    return functools.partial(_loader_worker, idle)


def lower_priority() -> None:
    """This thread (and the threads it starts later) at the lowest CPU priority: Linux ``SCHED_IDLE`` (runs only
    on cycles no other thread wants), else (or where that is refused) nice 19; unchanged where neither is allowed."""
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return
        except OSError:
            pass
    try:
        os.nice(19 - os.nice(0))
    except OSError:
        pass


class FolderStream:
    """Shuffled epochs over a caption table, sharded by rank; each clip gives a window of ``frames`` frames at
    ``fps`` true-speed frames per second from a start drawn from (seed, epoch, clip) (:func:`read_window`);
    unreadable or too-short clips are skipped and counted. ``batch_fps`` holds the rate each clip of the last
    batch was read at (a short clip's is higher): what an fps-conditioned teacher is fed.

    With ``num_workers`` > 0 the clips are read ahead by a torch DataLoader's worker processes, in position order:
    the batches are the same as with none, and a resumed stream starts its loader at the saved position.
    ``idle_workers``: the workers share the CPU with the model, so they run at idle priority (:func:`worker_init`)."""

    def __init__(self, root: str, captions: str | None, frames: int, height: int, width: int, batch_size: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1, log=print, fps: float = 8.0,
                 num_workers: int = 0, pin_memory: bool = False, align: str = "random", idle_workers: bool = False):
        root_p = Path(root)
        self.clips = folder_clips(root_p, captions, log=log)
        self.frames, self.height, self.width, self.fps = frames, height, width, float(fps)
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world_size
        self.num_workers, self.pin_memory, self.align = num_workers, pin_memory, align
        self.idle_workers = idle_workers
        self.position = 0  # clips consumed by this rank
        self.skipped: list[str] = []
        self.batch_fps: list[float] | None = None
        self.log = log
        self._windows = _ClipWindows(self)
        self._items = None  # the loader's iterator, from self.position on

    def _next_item(self):
        if not self.num_workers:
            return self._windows[self.position]
        if self._items is None:
            loader = torch.utils.data.DataLoader(
                self._windows, sampler=_From(self.position), batch_size=None, num_workers=self.num_workers,
                prefetch_factor=max(2, self.batch_size), pin_memory=self.pin_memory,
                worker_init_fn=worker_init(self.idle_workers))
            self._items = iter(loader)
        return next(self._items)

    def next_batch(self) -> tuple[torch.Tensor, list[str]]:
        pixels, caps, rates = [], [], []
        tries = 0
        while len(pixels) < self.batch_size:
            frames, caption, rate, why = self._next_item()
            self.position += 1
            if frames is None:
                self.skipped.append(caption)
                self.log(f"skipping unreadable clip ({len(self.skipped)} so far): {why}")
                tries += 1
                if tries >= max(len(self.clips), 1) * 2:
                    raise ConfigError(f"no readable video in {len(self.clips)} clips listed for data.path (or every "
                                      f"one is too short for {self.frames} frames at data.sample_fps "
                                      f"{self.fps:g}); check the files or lower video.frames") from None
                continue
            pixels.append(frames)
            caps.append(caption)
            rates.append(rate)
        self.batch_fps = rates
        return torch.stack(pixels), caps

    def captions(self) -> list[str]:
        """Every caption of the table (each once, in table order)."""
        return list(dict.fromkeys(c.caption for c in self.clips))

    def state_dict(self) -> dict:
        return {"position": self.position, "skipped": list(self.skipped)}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])
        self.skipped = list(state.get("skipped", []))
        self._items = None  # the loader starts again at the new position


class TinyWorldStream:
    """Procedural clips of the tiny world (one coloured shape moving), generated from (seed, position, rank).

    The world renders 8 x 24 x 24; another ``frames`` / ``height`` / ``width`` (a tiny Wan needs 1 + 4k frames
    and sides divisible by 16) is fitted as a folder's clips are (:func:`fit_clip`: frames strided or the last one
    repeated, resized and centre-cropped)."""

    def __init__(self, frames: int, height: int, width: int, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        from .tiny import world

        if min(frames, height, width) < 1 or height > 8 * world.HEIGHT or width > 8 * world.WIDTH:
            raise ConfigError(f"data.source tiny-world renders {world.FRAMES}x{world.HEIGHT}x{world.WIDTH} clips; "
                              f"video.frames/height/width {frames}x{height}x{width} are out of range")
        self.shape = (frames, height, width)
        self.native = self.shape == (world.FRAMES, world.HEIGHT, world.WIDTH)
        self.world_mod = world
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world_size
        self.position = 0
        self.skipped: list[str] = []
        #: the world's clips are rendered at the recipe's rate
        self.batch_fps: list[float] | None = None

    def next_batch(self) -> tuple[torch.Tensor, list[str]]:
        clips, caps = self.world_mod.random_clips(self.batch_size, seed=mix_seed(self.seed, self.position, self.rank))
        if not self.native:
            clips = torch.stack([fit_clip(c, *self.shape) for c in clips])
        self.position += 1
        return clips, list(caps)

    def captions(self) -> list[str]:
        """Every caption this stream can give (the world's 48)."""
        return self.world_mod.all_captions()

    def state_dict(self) -> dict:
        return {"position": self.position, "skipped": []}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])


def make_stream(recipe, rank: int = 0, world_size: int = 1, log=print):
    d, v, t = recipe.data, recipe.video, recipe.train
    if d.source == "tiny-world":
        return TinyWorldStream(v.frames, v.height, v.width, t.batch_size, t.seed, rank, world_size)
    cuda = recipe.model.device != "cpu" and torch.cuda.is_available()
    workers = default_workers(cuda) if d.num_workers is None else d.num_workers
    if d.source == "webdataset":
        from .webdata import make_webdataset_stream

        return make_webdataset_stream(recipe, rank, world_size, log, num_workers=workers, pin_memory=cuda,
                                      idle_workers=not cuda)
    if d.source == "latents":
        from .latents import LatentStream

        return LatentStream(d.path, t.batch_size, t.seed, rank, world_size, log=log, recipe=recipe)
    return FolderStream(d.path, d.captions, v.frames, v.height, v.width, t.batch_size, t.seed, rank, world_size, log,
                        fps=d.sample_fps or v.fps, num_workers=workers, pin_memory=cuda, align=d.window_start,
                        idle_workers=not cuda)


def default_workers(cuda: bool) -> int:
    """``data.num_workers`` left out: training on a GPU, one decoding process per core beyond the first, at most 4;
    training on the CPU, none: decoding in the step with FFmpeg's threads is as fast as idle-priority workers there
    (measured on 2 cores, tiny recipe, web-coded 720p / 1080p clips, keyframe windows, 5 runs each: 0 workers 1.14x
    the tiny world's s/step, 1 worker 1.18x, 2 workers 1.22x; bench/data_throughput.py), without their memory."""
    return max(0, min(4, (os.cpu_count() or 1) - 1)) if cuda else 0
