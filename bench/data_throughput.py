"""Reading training clips: today's folder reader against the window reader, side by side on generated H.264 clips.

- today: ``read_video`` decodes the whole file to float32, then ``data.fit_clip`` strides 16 frames over the whole
  clip and resizes them (what ``FolderStream`` does for every clip of every step);
- window: ``video.read_window`` seeks to the keyframe before a 16-frame window at 8 fps true speed, decodes to its
  end (skipping the non-reference frames no target shows), and converts only the chosen frames, at the target
  size, before they become float.

Each reading runs in a child process of its own, so its peak RSS is its own (minus the same imports for both).
Clips are generated once into ``--cache``/``--clips`` (360p / 720p / 1080p x 5 s / 30 s at 25 fps by default):
``web`` (default) as web video is coded (B-frames, ~4 Mbit/s at 1080p), ``noise`` a 26 Mbit/s all-P stress test.

    python bench/data_throughput.py                      # the full table (generates the clips once)
    python bench/data_throughput.py --sizes 360 --lengths 5 --repeats 1   # a quick look
    python bench/data_throughput.py --distill tiny-world,folder-0,folder-1,folder-2   # s/step from each source
    python bench/data_throughput.py --distill tiny-world,folder-0 --set data.window_start=keyframe   # a recipe key
    python bench/data_throughput.py --distill tiny-world,folder-1,tiny-world-1   # tiny-world-N: the model on N
                                                                   # fewer threads (what busy workers would cost)
    python bench/data_throughput.py --distill mid-folder,mid-latents    # the mid-size teacher: videos vs prepared
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

SIZES = {360: (640, 360), 720: (1280, 720), 1080: (1920, 1080)}


CLIP_STYLES = {
    "web": "a camera panning over a textured scene with a moving disc: H.264 as web video is (B-frames, ~4 Mbit/s "
           "at 1080p)",
    "noise": "a brightening gradient over fixed per-pixel noise: all P-frames, ~26 Mbit/s at 1080p (a decoding "
             "stress test, 3-5x the bitrate of web video)",
}


def make_clip(path: Path, width: int, height: int, seconds: float, fps: int = 25, style: str = "web") -> Path:
    """A generated clip (``CLIP_STYLES``), H.264 (preset veryfast, CRF 23, a keyframe every 2 s as most web video
    has)."""
    import av
    import numpy as np

    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.mp4")
    rng = np.random.default_rng(0)
    n = int(seconds * fps)
    if style == "noise":
        base = np.add.outer(np.arange(height), np.arange(width)) % 256
        noise = rng.integers(0, 32, size=(height, width))

        def frame(i):
            y = (base + 3 * i) % 256
            return np.stack([y, (y + noise) % 256, 255 - y], axis=-1)
    else:  # a scene larger than the view, smooth at several scales, panned 2 px a frame, a disc crossing it
        pan = 2 * n
        big_h, big_w = height + pan // 4, width + pan
        scene = np.zeros((big_h, big_w, 3))
        for cell, amp in ((1, 40), (8, 40), (32, 64), (128, 64)):
            coarse = rng.random((big_h // cell + 2, big_w // cell + 2, 3))
            scene += np.kron(coarse, np.ones((cell, cell, 1)))[:big_h, :big_w] * amp
        scene = np.clip(scene, 0, 255)
        grain = rng.integers(-2, 3, size=(8, height, width, 1))  # sensor noise: no two frames alike
        yy, xx = np.mgrid[0:height, 0:width]
        r = height // 8

        def frame(i):
            x0, y0 = 2 * i, (i // 4) % (pan // 4 + 1)
            img = scene[y0 : y0 + height, x0 : x0 + width].copy()
            cx, cy = (width * (0.2 + 0.6 * (i % (4 * fps)) / (4 * fps))), height / 2
            img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = (230, 60, 40)
            return np.clip(img + grain[i % 8], 0, 255)

    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23", "g": str(2 * fps)}
        for i in range(n):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame(i).astype(np.uint8), format="rgb24")))
        container.mux(stream.encode())
    tmp.rename(path)
    return path


def read_once(reader: str, path: str, frames: int, fps: float, size: int) -> dict:
    """One read in this process: seconds and the peak RSS it reached."""
    import torch

    torch.set_num_threads(1)
    from t2vturbo.data import fit_clip
    from t2vturbo.video import read_video, read_window

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    if reader == "today":
        pixels = fit_clip(read_video(path), frames, size, size)
    else:
        pixels = read_window(path, frames, fps, size, size, start=lambda latest: latest / 2).pixels
    seconds = time.perf_counter() - t0
    assert pixels.shape == (frames, 3, size, size)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mib": peak, "imports_mib": before}


def _uss_mib(pid: int) -> float:
    """A process's unique set size (the pages only it maps: a forked worker's copied and new pages), MiB."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            return sum(int(line.split()[1]) for line in fh if line.startswith(("Private_Clean:", "Private_Dirty:")))/1024
    except (OSError, ValueError):
        return 0.0


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo += [int(c) for c in fh.read().split()]
        except OSError:
            pass
    return out


class WorkerMemory:
    """Samples, every ``every`` seconds in a thread, the summed USS of this process's descendants (the loader
    workers): what they hold beyond the pages they share with the training process (a forked worker's untouched
    copy-on-write pages, the libraries). Its peak is ``peak_mib``; added to the training process's peak RSS it is
    what the run takes from the machine. Only the workers are read: reading a process's smaps stalls its page
    faults, and sampling the training process itself slowed the tiny step by a third. A sample of a worker costs
    ~8 ms of CPU (its smaps_rollup), so every 0.5 s: every 0.1 s took 8% of a core from the rows with workers."""

    def __init__(self, every: float = 0.5):
        import threading

        self.every, self.peak_mib, self._stop = every, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mib = max(self.peak_mib, sum(_uss_mib(p) for p in _tree(os.getpid())[1:]))
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


DISTILL_KINDS = ("tiny-world", "folder-0", "folder-1", "folder-2", "tiny-world-1", "tiny-world-2", "mid-folder",
                 "mid-latents")


def mid_loader(spec, device="cpu", dtype=None, text_table=None):
    """The mid-size teacher of bench/midsize.py in place of the recipe's (a table: answered from it, as
    ``load_teacher(text_table=...)`` does)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from midsize import PROPORTIONATE_VAE_CONFIG, build_midsize_teacher

    # the VAE in ModelScope's proportion to the UNet: what latents save is the encode's real share of a step
    teacher = build_midsize_teacher(seed=0, with_text=text_table is None, vae=PROPORTIONATE_VAE_CONFIG)
    if text_table is not None:
        teacher.release_text_encoder(text_table)
    return teacher.freeze().to(device=device, dtype=dtype)


def prepared_dir(args) -> Path:
    """Where the mid-size rows' clips are prepared (per shape; ``-vae2``: the proportionate VAE's latents)."""
    return Path(args.cache) / f"prepared-{args.mid_frames}x{args.mid_size}-vae2"


def distill_overrides(kind: str, args, prepared: Path) -> list[str]:
    ov = ["model.device=cpu", f"train.max_steps={args.steps}", "train.checkpoint_every=100000", "sample.prompts=[]",
          *args.set]
    if kind.startswith("tiny-world-"):  # the tiny world with N of its threads given up (to N busy loader workers)
        import torch

        ov += [f"train.num_threads={max(1, torch.get_num_threads() - int(kind.split('-')[2]))}"]
    elif kind.startswith("folder-"):
        ov += ["data.source=folder", f"data.path={args.cache}", f"data.num_workers={kind.split('-')[1]}"]
    elif kind.startswith("mid-"):
        ov += [f"video.frames={args.mid_frames}", f"video.height={args.mid_size}", f"video.width={args.mid_size}",
               "train.batch_size=1", "data.num_workers=0"]
        ov += (["data.source=folder", f"data.path={args.cache}"] if kind == "mid-folder"
               else ["data.source=latents", f"data.path={prepared}"])
    return ov


def distill_once(kind: str, args) -> dict:
    """A few distillation steps in this process (recipes/tiny.yaml; the mid-size teacher for mid-*): the median
    s/step of the steps after the first two, and the process's peak RSS."""
    import statistics
    import tempfile

    from t2vturbo.config import load_recipe
    from t2vturbo.distill import Distiller

    prepared = prepared_dir(args)
    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "tiny.yaml", distill_overrides(kind, args, prepared))
    extra = {"load_teacher": mid_loader} if kind.startswith("mid-") else {}
    with tempfile.TemporaryDirectory() as out, WorkerMemory() as workers:
        d = Distiller(recipe, out, progress=False, log=lambda m: None, **extra)
        d.setup()
        spent: list[tuple[int, float]] = []  # (step, seconds) in reading a batch and encoding it: what latents skip
        if kind == "mid-folder" or kind.startswith("folder-"):
            def timed(fn):
                def run(*a, **k):
                    t0 = time.perf_counter()
                    result = fn(*a, **k)
                    spent.append((d.step, time.perf_counter() - t0))
                    return result
                return run

            d.stream.next_batch = timed(d.stream.next_batch)  # folder-N: reading, or waiting for the workers
            if kind == "mid-folder":
                d.teacher.encode_video = timed(d.teacher.encode_video)
                d.teacher.encode_text = timed(d.teacher.encode_text)
        d.train()
        rows = [json.loads(line) for line in d.folder.metrics.read_text().splitlines()]
        d.stream.__dict__.pop("_items", None)  # the loader's workers stop and are joined: their peak is counted
        import gc

        gc.collect()
    seconds = [r["seconds"] for r in rows[2:]] or [r["seconds"] for r in rows]
    first = rows[0]["step"] + (len(rows) - len(seconds)) - 1  # the step index of the first timed row
    input_share = sum(t for s, t in spent if s >= first) / sum(seconds) if spent else None
    return {"seconds": statistics.median(seconds), "input_share": input_share, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "worker_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, "workers_uss_mib": workers.peak_mib}


def prepare_mid(args) -> tuple[Path, float]:
    """Prepare the clip folder for the mid-size rows once (cached); returns the folder and its seconds per clip."""
    from t2vturbo.config import load_recipe
    from t2vturbo.latents import INDEX_FILE, prepare_dataset

    prepared = prepared_dir(args)
    if (prepared / INDEX_FILE).is_file():
        return prepared, float("nan")
    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "tiny.yaml",
                         distill_overrides("mid-folder", args, prepared) + ["sample.prompts=[]"])
    t0 = time.perf_counter()
    index = prepare_dataset(recipe, prepared, load_teacher=mid_loader, log=lambda m: None)
    return prepared, (time.perf_counter() - t0) / max(1, index["clips"])


def distill_table(args) -> None:
    """s/step and peak RSS of each kind, each in a child process of its own, in turn (A B C ... A B C ...)."""
    cache = Path(args.cache)
    for size, length in ((720, 5), (720, 30), (1080, 5), (1080, 30)):
        w, h = SIZES[size]
        make_clip(cache / f"{size}p-{length:g}s.mp4", w, h, length, style=args.clips)
    captions = ["a red circle moving left", "a blue square moving up", "a green triangle moving right",
                "a yellow circle moving down"]
    (cache / "captions.csv").write_text("path,caption\n" + "".join(
        f"{n},{c}\n" for n, c in zip(["720p-5s.mp4", "720p-30s.mp4", "1080p-5s.mp4", "1080p-30s.mp4"], captions,
                                     strict=True)))
    kinds = [k for k in args.distill.split(",") if k]
    if any(k == "mid-latents" for k in kinds):
        _, per_clip = prepare_mid(args)
        print(f"prepare (mid-size teacher, {args.mid_frames}x{args.mid_size}): {per_clip:.2f} s per clip, once")
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    for _ in range(args.repeats):
        for kind in kinds:
            cmd = [sys.executable, __file__, "--distill-child", kind, "--steps", str(args.steps), "--cache", args.cache,
                   "--mid-frames", str(args.mid_frames), "--mid-size", str(args.mid_size),
                   *[f"--set={kv}" for kv in args.set]]
            out = subprocess.run(cmd, capture_output=True, text=True)
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
            runs[kind].append(json.loads(line[7:]) if line else
                              {"error": (out.stderr.strip().splitlines() or ["killed"])[-1][:120]})
    print(f"distillation, recipes/tiny.yaml, {args.steps} steps (median s/step of steps 3+, median of {args.repeats} "
          "runs); folder-N: 720p/1080p clips with N loader workers; mid-*: the mid-size teacher at "
          f"{args.mid_frames}x{args.mid_size}x{args.mid_size}, batch 1")
    med = {}
    for kind, results in runs.items():
        ok = [r for r in results if "error" not in r]
        if not ok:
            print(f"{kind:<12} failed: {results[0]['error']}")
            continue
        workers = int(kind.split("-")[1]) if kind.startswith("folder-") else 0
        # the training process's peak plus, with loader workers, each worker's (the largest one's, times their count)
        med[kind] = tuple(sorted(vals)[len(ok) // 2] for vals in (
            [r["seconds"] for r in ok], [r["peak_mib"] for r in ok], [r["peak_mib"] + (r["workers_uss_mib"] if workers else 0) for r in ok],
            [r["peak_mib"] + workers * r.get("worker_mib", 0) for r in ok]))
        print(f"  {kind}: s/step of each run " + ", ".join(f"{r['seconds']:.3f}" for r in ok))
    print("memory: RSS, the training process's peak RSS; +workers, that plus the peak of the loader workers' own "
          "pages (USS: what they do not share with it; the run's whole take from the machine); RSS sum, the peak RSS "
          "plus workers x the largest worker's peak RSS (shared pages counted once per process: an upper bound)")
    print(f"{'source':<12} {'s/step':>7} {'ratio':>6} {'RSS MiB':>8} {'ratio':>6} {'+workers':>9} {'ratio':>6} "
          f"{'RSS sum':>8} {'ratio':>6}")
    for kind, vals in med.items():
        base = "mid-folder" if kind.startswith("mid-") else "tiny-world"
        cells = [f"{v:>{w}.{3 if i == 0 else 0}f} " + (f"{v / med[base][i]:>5.2f}x" if base in med else " " * 6)
                 for i, (v, w) in enumerate(zip(vals, (7, 8, 9, 8), strict=True))]
        print(f"{kind:<12} " + " ".join(cells))
    shares = [r["input_share"] for r in runs.get("mid-folder", []) if r.get("input_share") is not None]
    if shares:
        print(f"mid-folder: reading, encoding the clips and the captions {min(shares):.1%}-{max(shares):.1%} of its "
              "step time: what prepared latents skip (a latents step is at best 1 minus that)")
    for kind in (k for k in runs if k.startswith("folder-")):
        waits = [r["input_share"] for r in runs[kind] if r.get("input_share") is not None]
        if waits:
            print(f"{kind}: the step waits for its batch (reading it, or for the workers) {min(waits):.1%}-"
                  f"{max(waits):.1%} of its time")


def child(reader: str, path: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--child", reader, str(path), "--frames", str(args.frames), "--fps",
           str(args.fps), "--size", str(args.size)]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        return {"error": (out.stderr.strip().splitlines() or ["killed"])[-1][:80]}
    return json.loads(line[7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="360,720,1080")
    ap.add_argument("--lengths", default="5,30")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--fps", type=float, default=8.0)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2, help="reads of each kind (A B A B), the median is printed")
    ap.add_argument("--cache", default="/tmp/t2vturbo-bench-clips", help="clips are generated once into CACHE/STYLE")
    ap.add_argument("--clips", choices=sorted(CLIP_STYLES), default="web", help="the generated clips' content")
    ap.add_argument("--child", nargs=2, metavar=("READER", "PATH"))
    ap.add_argument("--distill", default="", help=f"instead of the read table, distillation s/step of these kinds "
                    f"(comma-separated: {','.join(DISTILL_KINDS)})")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--mid-frames", type=int, default=8)
    ap.add_argument("--mid-size", type=int, default=128)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a recipe override for every distillation row (repeatable), e.g. --set train.num_threads=1")
    ap.add_argument("--distill-child")
    args = ap.parse_args()
    if not (args.child or args.distill_child):  # the children are given the style's own folder
        args.cache = str(Path(args.cache) / args.clips)
        print(f"clips: {args.clips}, {CLIP_STYLES[args.clips]}")
    if args.distill_child:
        print("RESULT " + json.dumps(distill_once(args.distill_child, args)))
        return
    if args.distill:
        distill_table(args)
        return
    if args.child:
        print("RESULT " + json.dumps(read_once(args.child[0], args.child[1], args.frames, args.fps, args.size)))
        return
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    print(f"{args.frames} frames at {args.fps:g} fps, {args.size}x{args.size}; memory: the read's process peak RSS "
          "above what its imports already held; median of the reads")
    print(f"{'clip':<12} {'today s':>9} {'window s':>9} {'speed-up':>9} {'today MiB':>10} {'window MiB':>11} "
          f"{'memory':>8}")
    for size in [int(s) for s in args.sizes.split(",")]:
        for length in [float(x) for x in args.lengths.split(",")]:
            w, h = SIZES[size]
            path = make_clip(cache / f"{size}p-{length:g}s.mp4", w, h, length, style=args.clips)
            runs: dict[str, list[dict]] = {"today": [], "window": []}
            for _ in range(args.repeats):
                for reader in ("today", "window"):
                    runs[reader].append(child(reader, path, args))
            row = {}
            for reader, results in runs.items():
                ok = [r for r in results if "error" not in r]
                row[reader] = (sorted(r["seconds"] for r in ok)[len(ok) // 2],
                               sorted(r["peak_mib"] - r["imports_mib"] for r in ok)[len(ok) // 2]) if ok else None
            if row["today"] is None or row["window"] is None:  # today's reader can run out of memory
                cells = [f"{row[k][0]:.3f} s, {row[k][1]:.0f} MiB" if row[k] else
                         "failed: " + next(r["error"] for r in runs[k] if "error" in r) for k in ("today", "window")]
                print(f"{size}p {length:g}s".ljust(12), f"today {cells[0]} | window {cells[1]}")
                continue
            (ts, tm), (ws, wm) = row["today"], row["window"]
            print(f"{f'{size}p {length:g}s':<12} {ts:>9.2f} {ws:>9.3f} {ts / ws:>8.1f}x {tm:>10.0f} {wm:>11.0f} "
                  f"{wm / tm:>7.3f}x")


if __name__ == "__main__":
    main()
