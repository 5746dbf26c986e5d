"""Score video files with reward models: find the videos, find each one's prompt, batch them through each
reward, and report per-video scores, per-reward means and every file that could not be scored.

Finding the videos and their prompts is :mod:`t2vturbo.inputs`. A file that cannot be read or has no prompt is
reported by name and skipped; the rest is scored.
"""

from __future__ import annotations

import csv
import glob
import io
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError, VideoReadError
from .inputs import Failure, find_videos, read_prompts_file, resolve_prompts
from .rewards import reward_frame_indices
from .safeio import atomic_path, save_json
from .video import VIDEO_SUFFIXES, read_video_frames


@dataclass
class VideoScore:
    path: str
    prompt: str
    prompt_source: str  # "prompts-file" | "sidecar" | "vbench-name"
    frames: int = 0
    scores: dict[str, float] = field(default_factory=dict)


@dataclass
class ScoreReport:
    rewards: list[str]
    videos: list[VideoScore] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def means(self) -> dict[str, float | None]:
        """Mean score per reward over the videos that have one (None when no video has it)."""
        out: dict[str, float | None] = {}
        for name in self.rewards:
            values = [v.scores[name] for v in self.videos if name in v.scores]
            out[name] = sum(values) / len(values) if values else None
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "t2vturbo-score",
            "version": 1,
            "rewards": list(self.rewards),
            "means": self.means(),
            "num_scored": len(self.videos),
            "num_failed": len({f.path for f in self.failures}),
            "videos": [asdict(v) for v in self.videos],
            "failures": [asdict(f) for f in self.failures],
            "ok": self.ok,
        }

    def write_json(self, path: str | os.PathLike) -> None:
        save_json(self.to_dict(), path)

    def write_csv(self, path: str | os.PathLike) -> None:
        """One row per scored video (path, prompt, one column per reward), then one row per failure."""
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["path", "prompt", *self.rewards, "error"])
        for v in self.videos:
            writer.writerow([v.path, v.prompt, *(_fmt(v.scores.get(r)) for r in self.rewards), ""])
        for f in self.failures:
            error = f"{f.reward}: {f.error}" if f.reward else f.error
            writer.writerow([f.path, "", *([""] * len(self.rewards)), error])
        with atomic_path(path) as tmp:
            tmp.write_text(buf.getvalue())


def merge_reports(reports: Sequence[ScoreReport]) -> ScoreReport:
    """One report from per-process reports (videos sorted by path, failures in rank order)."""
    merged = ScoreReport(rewards=list(reports[0].rewards))
    for r in reports:
        merged.videos.extend(r.videos)
        merged.failures.extend(r.failures)
    merged.videos.sort(key=lambda v: v.path)
    return merged


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


# ----------------------------------------------------------------------------------------------------------
# Scoring


def score_videos(
    paths: Iterable[str | os.PathLike],
    rewards: Sequence[str | tuple[str, torch.nn.Module]],
    prompts_file: str | os.PathLike | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    checkpoints: Mapping[str, str] | None = None,
    reward_options: Mapping[str, Mapping[str, Any]] | None = None,
    max_frames: int | None = None,
    on_progress: Callable[[int, int, str], None] | None = None,
    shard: tuple[int, int] | None = None,
    workers: int = 0,
) -> ScoreReport:
    """Score every video under ``paths`` with each reward.

    Args:
        paths: files, folders (searched recursively for mp4/gif/webm) or glob patterns.
        rewards: registry names (or ``module:factory``), all loaded before scoring starts (a missing weight fails
            before any video is read) and freed at the end; or ``(name, model)`` pairs already loaded (kept).
            Each video is decoded once for all of them, and only the frames they score are converted.
        prompts_file: CSV / JSONL / TXT prompts (see :func:`read_prompts_file`); else sidecars / VBench names.
        batch_size: videos per forward pass (videos of equal frame count and size are batched together).
        device, dtype: where the rewards run.
        checkpoints: reward name -> weight path (``--reward-checkpoint NAME=PATH``).
        reward_options: reward name -> loader options (e.g. a small architecture).
        max_frames: image rewards score at most this many evenly strided frames per video (default: all).
        on_progress: called as ``(done, total, description)`` after each video and reward.
        shard: ``(rank, world_size)``: score only every world_size-th video (sorted order) starting at rank;
            failures found before scoring (no prompt, bad path) are reported by rank 0 alone. Merge the
            per-rank reports with :func:`merge_reports`.
        workers: threads decoding videos ahead of the rewards (0: up to 4, at most the CPU count).

    Returns:
        A :class:`ScoreReport`; unreadable files and videos without a prompt are in ``failures``.

    Raises:
        ConfigError: no video found, or a bad prompts file. Reward loading errors (unknown name, missing
            weights) propagate as raised by :func:`t2vturbo.rewards.load_reward`.
    """
    from .rewards import load_reward

    paths = [str(p) for p in paths]
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    if not rewards:
        raise ConfigError("no reward given; name at least one with --reward NAME")
    videos, failures = find_videos(paths)
    if not videos:
        absent = [p for p in paths if not Path(p).expanduser().exists() and not glob.has_magic(str(p))]
        if absent:
            raise ConfigError(f"no such file or folder: {absent[0]}; pass existing videos or folders")
        raise ConfigError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) found in {', '.join(paths[:3])}{' ...' if len(paths) > 3 else ''}")
    prompts = read_prompts_file(prompts_file) if prompts_file else None
    prompt_of, no_prompt = resolve_prompts(videos, prompts)
    failures += no_prompt

    names = [r[0] if isinstance(r, tuple) else r for r in rewards]
    if shard is not None:
        rank, world = shard
        videos = sorted(videos)[rank::world]
        if rank != 0:
            failures = []
    report = ScoreReport(rewards=names, failures=failures)
    entries = {v: VideoScore(str(v), *prompt_of[v]) for v in videos if v in prompt_of}
    pending = list(entries)
    total, done = len(pending) * len(rewards), 0
    checkpoints = checkpoints or {}
    reward_options = reward_options or {}
    if workers < 0:
        raise ConfigError(f"workers must be 0 (automatic) or more, got {workers}")
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    models: list[tuple[str, torch.nn.Module]] = []
    for item in rewards:
        if isinstance(item, tuple):
            models.append(item)
        else:
            models.append((item, load_reward(item, checkpoint=checkpoints.get(item), device=device, dtype=dtype,
                                             **reward_options.get(item, {}))))

    def frames_for(count: int, model: torch.nn.Module) -> list[int]:  # max_frames caps image rewards only
        return reward_frame_indices(count, model,
                                    None if getattr(model, "kind", "image") == "video" else max_frames)

    def pick(count: int) -> list[int]:  # every frame any reward scores
        return sorted({j for _, m in models for j in frames_for(count, m)})

    buckets: dict[tuple[int, tuple[int, ...]], list[tuple[Path, torch.Tensor]]] = {}

    def flush(key):
        nonlocal done
        batch = buckets.pop(key)
        name, model = models[key[0]]
        _score_batch(model, name, batch, entries, report, device)
        done += len(batch)
        if on_progress:
            on_progress(done, total, name)

    unreadable: list[Path] = []
    for video, read in _prefetch(pending, lookahead=batch_size * len(models), workers=workers, pick=pick):
        if isinstance(read, VideoReadError):
            report.failures.append(Failure(str(video), str(read)))
            unreadable.append(video)
            done += len(models)
            if on_progress:
                on_progress(done, total, models[0][0])
            continue
        frames, indices, count = read
        entries[video].frames = count
        pos = {j: k for k, j in enumerate(indices)}
        for i, (_, model) in enumerate(models):
            chosen = frames[[pos[j] for j in frames_for(count, model)]]
            key = (i, tuple(chosen.shape))
            buckets.setdefault(key, []).append((video, chosen))
            if len(buckets[key]) >= batch_size:
                flush(key)
            elif sum(map(len, buckets.values())) >= 2 * batch_size * len(models):
                # many different sizes: do not hold the whole folder in memory waiting for full batches
                flush(max(buckets, key=lambda k: len(buckets[k])))
    for key in list(buckets):
        flush(key)
    pending = [v for v in pending if v not in unreadable]
    models.clear()  # free the rewards this call loaded (the caller keeps the ones it passed)
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()
    report.videos = [entries[v] for v in pending if entries[v].scores]
    return report



def score_across_processes(paths: Iterable[str | os.PathLike], rewards: Sequence[str], device: str = "cpu",
                           **kwargs: Any) -> ScoreReport | None:
    """:func:`score_videos` under torchrun / accelerate launch: every process scores its share of the videos
    (``RANK`` / ``WORLD_SIZE``), rank 0 gets the merged report, the other ranks ``None``. Without a launcher it is
    :func:`score_videos` on one process.

    Raises:
        SystemExit(1) on a rank other than 0 when any rank failed a video (the launcher sees a failed run).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return score_videos(paths, rewards, device=device, **kwargs)
    import torch.distributed as dist

    from .names import process_device

    rank = int(os.environ.get("RANK", "0"))
    device = process_device(device)
    dist.init_process_group("gloo")
    try:
        report = score_videos(paths, rewards, device=device, shard=(rank, world), **kwargs)
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, report)
    finally:
        dist.destroy_process_group()
    if rank != 0:
        if not all(r.ok for r in gathered):
            raise SystemExit(1)
        return None
    return merge_reports(gathered)

def _score_batch(model, name: str, batch, entries: dict[Path, VideoScore], report: ScoreReport, device) -> None:
    videos = [v for v, _ in batch]
    try:
        frames = torch.stack([f for _, f in batch]).to(device)
        with torch.no_grad():
            scores = model(frames, [entries[v].prompt for v in videos]).float().cpu().tolist()
    except (RuntimeError, ValueError) as err:  # e.g. out of memory, a clip the model cannot take
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        report.failures.extend(Failure(str(v), reason, reward=name) for v in videos)
        return
    for video, score in zip(videos, scores, strict=True):
        entries[video].scores[name] = score


def _prefetch(videos: Sequence[Path], lookahead: int, workers: int = 1,
              pick: Callable[[int], Sequence[int]] | None = None,
              ) -> Iterator[tuple[Path, tuple[torch.Tensor, list[int], int] | VideoReadError]]:
    """Decode videos on ``workers`` background threads (PyAV decodes without the GIL), up to ``lookahead`` ahead
    of the consumer, in order: decoding overlaps scoring. Yields ``(path, (frames, indices, total))`` with only
    the frames ``pick`` names, or ``(path, VideoReadError)``."""

    def read(path: Path):
        try:
            return read_video_frames(path, pick)
        except VideoReadError as err:
            return err

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        queue: list[tuple[Path, Future]] = []
        it = iter(videos)
        for video in it:
            queue.append((video, pool.submit(read, video)))
            if len(queue) > max(lookahead, workers):
                break
        while queue:
            video, fut = queue.pop(0)
            nxt = next(it, None)
            if nxt is not None:
                queue.append((nxt, pool.submit(read, nxt)))
            yield video, fut.result()
