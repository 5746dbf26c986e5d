"""Training from WebDataset tar shards (``data.source: webdataset``), as video2dataset writes them.

``data.path`` names the shards: a brace pattern (``shards/{00000..00099}.tar``), one ``.tar``, a folder of
``.tar`` files, or a glob (``shards/*.tar``); http(s)://, s3://, pipe:... URLs are handed to the ``webdataset``
package as they are. Each sample is the tar members sharing a key: the video is the first of
``KEY.mp4 / .webm / .mkv / .avi / .mov``, the caption ``KEY.txt``, else ``KEY.json``'s ``caption``.

Order (a pure function of seed, position, rank, world size and the stream's count of *readers*):

- epoch ``e`` permutes the shard list with ``mix_seed(seed, e)``; rank ``r`` of ``w`` takes every ``w``-th shard
  of it from the ``r``-th (whole shards; a rank without one is refused at creation);
- the rank's shards are dealt round-robin to ``R`` readers (``R`` = data.num_workers when the stream first
  starts, at least 1 and at most the rank's shard count); each reader reads its shards in order, sample after
  sample, and goes on to its share of the next epoch when it is through; the stream takes one sample from each
  reader in turn. With 0 or 1 workers there is one reader: the same batches either way;
- a sample's window start is drawn from (seed, epoch, sample key), as :class:`~t2vturbo.data.FolderStream` does.

Resume is exact: the state records, per reader, its epoch and the shards it has left with the count of samples
already taken from the first, and which reader is next. A resumed stream reopens each reader's shard and passes
over the samples taken (their tar members are stepped over unread and nothing is decoded), so it gives the same
batches as the uninterrupted run. The reader count is kept from the checkpoint: a run resumed with another
data.num_workers uses the largest count of loader processes that divides it (each process serves R / W readers),
0 meaning all readers in the training process.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import torch

from .data import mix_seed, worker_init
from .errors import ConfigError, VideoReadError

#: a sample's video is its first member with one of these extensions
VIDEO_KEYS = ("mp4", "webm", "mkv", "avi", "mov")
#: shard URLs that are handed to webdataset untouched (not checked on this machine)
REMOTE_PREFIXES = ("pipe:", "http://", "https://", "s3://", "gs://", "hf://", "ais://")
INSTALL = "pip install 't2vturbo[data]' (or pip install webdataset)"


def _braceexpand(pattern: str) -> list[str]:
    try:
        from braceexpand import braceexpand
    except ImportError:
        raise ConfigError(f"data.source webdataset needs the webdataset package: {INSTALL}") from None
    try:
        return list(braceexpand(pattern))
    except Exception as err:  # an unbalanced brace, ...
        raise ConfigError(f"data.path {pattern!r} is not a valid shard pattern ({err}); write e.g. "
                          "shards/{00000..00099}.tar") from None


def is_remote(url: str) -> bool:
    return url.startswith(REMOTE_PREFIXES)


#: a local file with one of these suffixes is a list of shards: a pattern, URL or path a line (relative paths from
#: the list's folder; empty lines and ``#`` comments skipped)
SHARD_LIST_SUFFIXES = (".txt", ".list")


def shard_urls(path: str, _depth: int = 0) -> list[str]:
    """``data.path`` -> the shard list, in order (local paths are not checked here: :func:`shard_problem`)."""
    urls: list[str] = []
    for piece in _braceexpand(str(path).strip()):
        if is_remote(piece):
            urls.append(piece)
            continue
        local = Path(piece.removeprefix("file://")).expanduser()
        if local.is_file() and local.suffix in SHARD_LIST_SUFFIXES and _depth == 0:
            for line in local.read_text(encoding="utf-8", errors="replace").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    here = line if is_remote(line) or Path(line).expanduser().is_absolute() else str(local.parent / line)
                    urls += shard_urls(here, _depth + 1)
        elif local.is_dir():
            urls += sorted(str(p) for p in local.glob("*.tar"))
        elif any(c in piece for c in "*?["):
            urls += sorted(glob.glob(str(local)))
        else:
            urls.append(str(local))
    return urls


def shard_problem(path: str) -> str | None:
    """One line on what is wrong with ``data.path``'s local shards (none listed, some missing), or None."""
    urls = shard_urls(path)
    if not urls:
        return (f"data.path {path} names no .tar shard; give a pattern like shards/{{00000..00099}}.tar, a .tar "
                "file, a folder of .tar files or a shards.txt listing them")
    missing = [u for u in urls if not is_remote(u) and not Path(u).is_file()]
    if missing:
        return (f"data.path {path}: shard not found: {missing[0]} ({len(missing)} of {len(urls)} missing); fix the "
                "pattern or the range in braces (e.g. shards/{00000..00099}.tar) to name only shards that exist")
    return None


def _key_seed(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8", "replace"), digest_size=8).digest(), "little")


def _caption(sample: dict) -> str | None:
    """The sample's ``txt``, else its ``json``'s ``caption``; None when it has neither."""
    if "txt" in sample:
        return sample["txt"].decode("utf-8", "replace").strip()
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        if isinstance(meta, dict) and isinstance(meta.get("caption"), str):
            return meta["caption"].strip()
    return None


def _after(skip: int):
    """A ``select_files`` that steps over the members of the shard's first ``skip`` samples (a sample is a run of
    members sharing a key, as webdataset groups them), so they are neither read nor decoded."""
    from webdataset.tariterators import base_plus_ext

    seen = {"count": 0, "key": None}

    def select(fname: str) -> bool:
        key, _ = base_plus_ext(fname)
        if key is None:
            return False  # webdataset drops it too
        if key != seen["key"]:
            seen["count"], seen["key"] = seen["count"] + 1, key
        return seen["count"] > skip

    return select


def _reason(err: BaseException) -> str:
    first = str(err.args[0]).split(" @ ")[0].strip() if err.args else ""  # webdataset appends " @ <stream>"
    return (f"{type(err).__name__}: {first}" if first else type(err).__name__).splitlines()[0]


def shard_samples(url: str, skip: int = 0, select=None, errors: list | None = None) -> Iterator[dict]:
    """The samples of one shard (webdataset's tar iterator, keys grouped), from its ``skip``-th on. A shard that
    cannot be opened or read to its end stops there; the exception is appended to ``errors``."""
    from webdataset.tariterators import tarfile_samples

    failures = [] if errors is None else errors

    def stop(err: BaseException) -> bool:
        failures.append(err)
        return False

    source = [{"url": url}]
    try:
        yield from tarfile_samples(source, handler=stop, select_files=select or (_after(skip) if skip else None))
    finally:
        stream = source[0].get("stream")
        if stream is not None:
            try:
                stream.close()
            except Exception:  # a pipe: command's exit status, ...
                pass


class _Readers(torch.utils.data.IterableDataset):
    """Items of one rank's stream: ``(pixels, caption, fps, None, tag)``, ``(None, where, None, why, tag)`` for a
    sample that is skipped, ``(None, "", None, why, None)`` when the stream cannot go on. ``tag`` is
    ``(reader, epoch, k, index, last)``: the reader's ``k``-th shard of the epoch, the sample's index in the shard,
    and whether it closes the shard. In a loader worker, process ``i`` of ``W`` serves readers
    ``offset + i, offset + i + W, ...`` (mod R) in turn; in the training process, all of them."""

    def __init__(self, stream: WebDatasetStream):
        self.urls, self.seed, self.rank, self.world = stream.urls, stream.seed, stream.rank, stream.world
        self.frames, self.height, self.width, self.fps = stream.frames, stream.height, stream.width, stream.fps
        self.readers, self.align = stream.readers, stream.align
        self.start = [(e, list(todo)) for e, todo in stream._start]
        self.offset = stream._next_reader

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        processes, me = (1, 0) if info is None else (info.num_workers, info.id)
        mine = [(self.offset + me + k * processes) % self.readers for k in range(self.readers // processes)]
        readers = [self._reader(r, *self.start[r]) for r in mine]
        while True:
            for reader in readers:
                yield next(reader)

    def _reader(self, reader: int, epoch: int, todo: list[tuple[int, int]]):
        empty = 0  # whole epochs in a row in which this reader's shards held no sample
        while True:
            whole = todo == [(s, 0) for s in reader_shards(len(self.urls), self.seed, epoch, self.rank, self.world,
                                                           reader, self.readers)]  # not a resumed remainder
            got = False
            for k, (shard, skip) in enumerate(todo):
                url, errors, held = self.urls[shard], [], None
                for index, sample in enumerate(shard_samples(url, skip, errors=errors), start=skip):
                    got = True
                    if held is not None:  # one sample of look-ahead: the last one of a shard says so
                        yield self._item(*held, last=False)
                    held = (sample, url, (reader, epoch, k, index))
                if held is not None:
                    yield self._item(*held, last=not errors)
                if errors:
                    got = True
                    after = held[2][3] + 1 if held is not None else skip
                    yield (None, url, None, f"shard {url} cannot be read after its first {after} sample(s) "
                           f"({_reason(errors[0])}); the rest of it is skipped", (reader, epoch, k, after, True))
            if todo and whole and not got:
                empty += 1
                if empty >= 2:
                    why = (f"data.path: the shards of rank {self.rank} held no sample in two whole passes (a "
                           "sample is tar members sharing a key: KEY.mp4 + KEY.txt or KEY.json); check the shards")
                    while True:
                        yield None, "", None, why, None
            elif got:
                empty = 0
            epoch += 1
            todo = [(s, 0) for s in reader_shards(len(self.urls), self.seed, epoch, self.rank, self.world,
                                                  reader, self.readers)]

    def _item(self, sample: dict, url: str, tag: tuple, last: bool):
        from .video import read_window

        reader, epoch, k, index = tag
        key = str(sample.get("__key__", index))
        where = f"{url}:{key}"
        tag = (reader, epoch, k, index, last)
        ext = next((x for x in VIDEO_KEYS if x in sample), None)
        if ext is None:
            return None, where, None, f"sample {where} has no video ({' / '.join(VIDEO_KEYS)} member); skipped", tag
        caption = _caption(sample)
        if caption is None:
            return None, where, None, f"sample {where} has no caption (a .txt member, or .json with 'caption'); " \
                                      "skipped", tag
        at = float(torch.rand((), generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch,
                                                                                   _key_seed(key), 1))))
        name = f"{where}.{ext}"
        try:
            window = read_window(io.BytesIO(sample[ext]), self.frames, self.fps, self.height, self.width,
                                 start=lambda latest: at * latest, name=name, align=self.align)
        except VideoReadError as err:
            why = str(err)
            return None, where, None, why if name in why else f"cannot read video {name}: {why}", tag
        return window.pixels, caption, window.fps, None, tag


def rank_shards(n: int, seed: int, epoch: int, rank: int, world: int) -> list[int]:
    """The shards (indices into the shard list) rank ``rank`` of ``world`` reads in ``epoch``, in order."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, epoch)))
    return [int(i) for i in perm[rank::world]]


def reader_shards(n: int, seed: int, epoch: int, rank: int, world: int, reader: int, readers: int) -> list[int]:
    return rank_shards(n, seed, epoch, rank, world)[reader::readers]


def _largest_divisor(n: int, at_most: int) -> int:
    return max((d for d in range(1, n + 1) if n % d == 0 and d <= at_most), default=0)


class WebDatasetStream:
    """Captioned clips from tar shards (module docstring: order, sharding, resume). Matches
    :class:`~t2vturbo.data.FolderStream`: ``next_batch() -> (pixels (B, F, 3, H, W) in [0, 1], captions)``,
    ``position`` (samples this rank has consumed, skipped ones included), ``skipped`` (where each skipped sample
    was), ``batch_fps`` (the rate each clip of the last batch was read at), ``state_dict`` / ``load_state_dict``."""

    def __init__(self, path: str, frames: int, height: int, width: int, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, log=print, fps: float = 8.0, num_workers: int = 0,
                 pin_memory: bool = False, align: str = "random", idle_workers: bool = False):
        try:
            import webdataset  # noqa: F401
        except ImportError:
            raise ConfigError(f"data.source webdataset needs the webdataset package: {INSTALL}") from None
        problem = shard_problem(path)
        if problem:
            raise ConfigError(problem)
        self.path, self.urls = path, shard_urls(path)
        n = len(self.urls)
        if n < world_size:
            raise ConfigError(f"data.path {path} has {n} shard(s) for {world_size} processes: each process reads "
                              f"whole shards; run at most {n} processes or split the data into more shards")
        self.frames, self.height, self.width, self.fps = frames, height, width, float(fps)
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world_size
        self.num_workers, self.pin_memory, self.align = max(0, int(num_workers)), pin_memory, align
        self.idle_workers = idle_workers  # beside a CPU model: the workers run at idle priority (data.worker_init)
        self.log = log
        self.position = 0
        self.skipped: list[str] = []
        self.batch_fps: list[float] | None = None
        self.per_rank = len(range(rank, n, world_size))
        self.readers = max(1, min(self.num_workers, self.per_rank))
        if self.num_workers > self.per_rank:
            log(f"data: {self.per_rank} shard(s) on this rank, so {self.readers} loader workers instead of "
                f"data.num_workers {self.num_workers} (each worker reads whole shards)")
        self._restart(0)

    # ------------------------------------------------------------------ reading
    def _restart(self, epoch: int) -> None:
        """Every reader at the start of ``epoch``; the loader starts again."""
        self._start = [(epoch, [(s, 0) for s in self._shards(epoch, r)]) for r in range(self.readers)]
        self._next_reader = 0
        self._reset()

    def _reset(self) -> None:
        self._cursor: dict[int, tuple[int, int, int, bool]] = {}  # reader -> its last item's (epoch, k, index, last)
        self._bad: dict[int, int] = {}  # reader -> its epoch when the current run of skipped samples began
        self._bad_count = 0
        self._items = None

    def _shards(self, epoch: int, reader: int) -> list[int]:
        return reader_shards(len(self.urls), self.seed, epoch, self.rank, self.world, reader, self.readers)

    def _processes(self) -> int:
        """Loader processes: the largest divisor of the reader count within data.num_workers (0: none)."""
        return _largest_divisor(self.readers, self.num_workers) if self.num_workers else 0

    def _next_item(self):
        if self._items is None:
            readers, processes = _Readers(self), self._processes()
            if not processes:
                self._items = iter(readers)
            else:
                loader = torch.utils.data.DataLoader(
                    readers, batch_size=None, num_workers=processes, prefetch_factor=max(2, self.batch_size),
                    pin_memory=self.pin_memory, worker_init_fn=worker_init(self.idle_workers))
                self._items = iter(loader)
        return next(self._items)

    def next_batch(self) -> tuple[torch.Tensor, list[str]]:
        pixels, caps, rates = [], [], []
        while len(pixels) < self.batch_size:
            frames, caption, rate, why, tag = self._next_item()
            if tag is None:
                raise ConfigError(why)
            reader, epoch, k, index, last = tag
            self._cursor[reader] = (int(epoch), int(k), int(index), bool(last))
            self._next_reader = (reader + 1) % self.readers
            self.position += 1
            if frames is None:
                self.skipped.append(caption)
                self.log(f"skipping unreadable clip ({len(self.skipped)} so far): {why}")
                self._bad.setdefault(reader, int(epoch))
                self._bad_count += 1
                if len(self._bad) == self.readers and all(self._cursor[r][0] - e >= 3 for r, e in self._bad.items()):
                    raise ConfigError(
                        f"no readable video in the last {self._bad_count} samples of data.path {self.path} (two "
                        f"whole passes over this rank's {self.per_rank} shard(s)), or every one is too short for "
                        f"{self.frames} frames at data.sample_fps {self.fps:g}; check the shards (the log names "
                        "each skipped sample) or lower video.frames")
                continue
            self._bad.clear()
            self._bad_count = 0
            pixels.append(frames)
            caps.append(caption)
            rates.append(rate)
        self.batch_fps = rates
        return torch.stack(pixels), caps

    def captions(self) -> list[str]:
        """Every caption of every shard (each once, in shard order), for ``train.cache_text``. Costly: each shard
        is read once through (its video members are stepped over, nothing is decoded), which for a large or
        remote dataset is the whole dataset's transfer."""
        self.log(f"train.cache_text: reading the captions of {len(self.urls)} shard(s) (each read through once; "
                 "videos are not decoded)")
        found: dict[str, None] = {}
        wanted = (".txt", ".json")
        for url in self.urls:
            errors: list = []
            for sample in shard_samples(url, select=lambda f: f.lower().endswith(wanted), errors=errors):
                caption = _caption(sample)
                if caption is not None:
                    found.setdefault(caption)
            if errors:
                self.log(f"train.cache_text: shard {url} cannot be read to its end ({_reason(errors[0])}); its "
                         "other captions are encoded when they are met")
        if not found:
            raise ConfigError(f"train.cache_text found no caption in data.path {self.path} (.txt members, or .json "
                              "with 'caption'); check the shards or set train.cache_text=false")
        return list(found)

    # ------------------------------------------------------------------ resume
    def _todo(self, reader: int) -> tuple[int, list[tuple[int, int]]]:
        """Where ``reader`` is: its epoch and the (shard, samples already taken) it has left in it."""
        start_epoch, start_todo = self._start[reader]
        cursor = self._cursor.get(reader)
        if cursor is None:
            return start_epoch, list(start_todo)
        epoch, k, index, last = cursor
        plan = start_todo if epoch == start_epoch else [(s, 0) for s in self._shards(epoch, reader)]
        return epoch, ([] if last else [(plan[k][0], index + 1)]) + list(plan[k + 1 :])

    def state_dict(self) -> dict:
        readers = [self._todo(r) for r in range(self.readers)]
        return {"position": self.position, "skipped": list(self.skipped), "source": "webdataset",
                "shards": len(self.urls), "rank": self.rank, "world": self.world,
                "readers": [[e, [[int(s), int(n)] for s, n in todo]] for e, todo in readers],
                "next_reader": self._next_reader}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])
        self.skipped = list(state.get("skipped", []))
        readers = state.get("readers")
        same = (state.get("source") == "webdataset" and state.get("shards") == len(self.urls)
                and state.get("world") == self.world and state.get("rank") == self.rank and readers)
        if not same:
            epoch = 1 + max((int(e) for e, _ in readers), default=-1) if readers else 0
            self.readers = max(1, min(self.num_workers, self.per_rank))
            self.log(f"data: the checkpoint's stream read {state.get('shards', '?')} shard(s) as rank "
                     f"{state.get('rank', '?')} of {state.get('world', '?')}, now {len(self.urls)} as rank "
                     f"{self.rank} of {self.world}; the shards are read again from epoch {epoch} (not the exact "
                     "continuation of the interrupted run)")
            self._restart(epoch)
            return
        self.readers = len(readers)
        self._start = [(int(e), [(int(s), int(n)) for s, n in todo]) for e, todo in readers]
        self._next_reader = int(state.get("next_reader", 0)) % self.readers
        processes = self._processes()
        if self.num_workers and processes != self.num_workers:
            self.log(f"data: the checkpoint's stream has {self.readers} shard reader(s); {processes} loader "
                     f"worker(s) instead of data.num_workers {self.num_workers}, so the resumed batches are the "
                     "uninterrupted run's")
        self._reset()


def make_webdataset_stream(recipe, rank: int = 0, world_size: int = 1, log=print, num_workers: int = 0,
                           pin_memory: bool = False, idle_workers: bool = False) -> WebDatasetStream:
    d, v, t = recipe.data, recipe.video, recipe.train
    if d.captions is not None:
        log("data.captions is not read for data.source webdataset: each sample's .txt / .json holds its caption")
    return WebDatasetStream(d.path, v.frames, v.height, v.width, t.batch_size, t.seed, rank, world_size, log,
                            fps=d.sample_fps or v.fps, num_workers=num_workers, pin_memory=pin_memory,
                            align=d.window_start, idle_workers=idle_workers)
