"""Reading training clips: today's folder reader against the window reader, side by side on generated H.264 clips.

- today: ``read_video`` decodes the whole file to float32, then ``data.fit_clip`` strides 16 frames over the whole
  clip and resizes them (what ``FolderStream`` does for every clip of every step);
- window: ``video.read_window`` seeks to the keyframe before a 16-frame window at 8 fps true speed, decodes to its
  end, and converts only the chosen frames, at the target size, before they become float.

Each reading runs in a child process of its own, so its peak RSS is its own (minus the same imports for both).
Clips are generated once into ``--cache`` (360p / 720p / 1080p x 5 s / 30 s at 25 fps by default).

    python bench/data_throughput.py                      # the full table (generates ~1 GB of clips once)
    python bench/data_throughput.py --sizes 360 --lengths 5 --repeats 1   # a quick look
    python bench/data_throughput.py --distill tiny-world,folder-0,folder-1,folder-2   # s/step from each source
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


def make_clip(path: Path, width: int, height: int, seconds: float, fps: int = 25) -> Path:
    """A moving gradient with noise, H.264 (preset veryfast, a keyframe every 2 s as most web video has)."""
    import av
    import numpy as np

    if path.is_file():
        return path
    tmp = path.with_suffix(".part.mp4")
    rng = np.random.default_rng(0)
    base = np.add.outer(np.arange(height), np.arange(width)) % 256
    noise = rng.integers(0, 32, size=(height, width))
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23", "g": str(2 * fps)}
        for i in range(int(seconds * fps)):
            y = (base + 3 * i) % 256
            rgb = np.stack([y, (y + noise) % 256, 255 - y], axis=-1).astype(np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
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


DISTILL_KINDS = ("tiny-world", "folder-0", "folder-1", "folder-2", "mid-folder", "mid-latents")


def mid_loader(spec, device="cpu", dtype=None, text_table=None):
    """The mid-size teacher of bench/midsize.py in place of the recipe's (a table: answered from it, as
    ``load_teacher(text_table=...)`` does)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from midsize import build_midsize_teacher

    teacher = build_midsize_teacher(seed=0, with_text=text_table is None)  # as load_teacher builds none
    if text_table is not None:
        teacher.release_text_encoder(text_table)
    return teacher.freeze().to(device=device, dtype=dtype)


def distill_overrides(kind: str, args, prepared: Path) -> list[str]:
    ov = ["model.device=cpu", f"train.max_steps={args.steps}", "train.checkpoint_every=100000", "sample.prompts=[]"]
    if kind.startswith("folder-"):
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

    prepared = Path(args.cache) / f"prepared-{args.mid_frames}x{args.mid_size}"
    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "tiny.yaml", distill_overrides(kind, args, prepared))
    extra = {"load_teacher": mid_loader} if kind.startswith("mid-") else {}
    with tempfile.TemporaryDirectory() as out:
        d = Distiller(recipe, out, progress=False, log=lambda m: None, **extra)
        d.setup()
        d.train()
        rows = [json.loads(line) for line in d.folder.metrics.read_text().splitlines()]
        d.stream.__dict__.pop("_items", None)  # the loader's workers stop and are joined: their peak is counted
        import gc

        gc.collect()
    seconds = [r["seconds"] for r in rows[2:]] or [r["seconds"] for r in rows]
    return {"seconds": statistics.median(seconds), "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "worker_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def prepare_mid(args) -> tuple[Path, float]:
    """Prepare the clip folder for the mid-size rows once (cached); returns the folder and its seconds per clip."""
    from t2vturbo.config import load_recipe
    from t2vturbo.latents import INDEX_FILE, prepare_dataset

    prepared = Path(args.cache) / f"prepared-{args.mid_frames}x{args.mid_size}"
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
        make_clip(cache / f"{size}p-{length:g}s.mp4", w, h, length)
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
                   "--mid-frames", str(args.mid_frames), "--mid-size", str(args.mid_size)]
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
        med[kind] = (sorted(r["seconds"] for r in ok)[len(ok) // 2],
                     sorted(r["peak_mib"] + workers * r.get("worker_mib", 0) for r in ok)[len(ok) // 2])
    print("RSS: the training process's peak, plus workers x the largest worker's peak")
    for kind, (sec, mib) in med.items():
        base = "mid-folder" if kind.startswith("mid-") else "tiny-world"
        ratio = f"{sec / med[base][0]:.2f}x s, {mib / med[base][1]:.2f}x RSS vs {base}" if base in med else ""
        print(f"{kind:<12} {sec:>7.3f} s/step {mib:>8.0f} MiB   {ratio}")


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
    ap.add_argument("--cache", default="/tmp/t2vturbo-bench-clips")
    ap.add_argument("--child", nargs=2, metavar=("READER", "PATH"))
    ap.add_argument("--distill", default="", help=f"instead of the read table, distillation s/step of these kinds "
                    f"(comma-separated: {','.join(DISTILL_KINDS)})")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--mid-frames", type=int, default=8)
    ap.add_argument("--mid-size", type=int, default=128)
    ap.add_argument("--distill-child")
    args = ap.parse_args()
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
            path = make_clip(cache / f"{size}p-{length:g}s.mp4", w, h, length)
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
