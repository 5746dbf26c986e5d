"""What ``t2vturbo score`` reads: the videos under the given paths, and each video's prompt.

Prompts come from, in order: a prompts file (CSV / JSONL / TXT), a sidecar ``.txt`` with the video's stem, the
VBench naming convention ``{prompt}-{index}.mp4`` (a stem that reads as a file name, ``s-0.mp4`` or
``out_2-0.mp4``, is reported as ambiguous rather than scored against "s"). Whatever cannot be found is a :class:`Failure` by name.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .video import VIDEO_SUFFIXES

_VIDEO_COLUMNS = ("video", "path", "file", "filename", "name")
_VBENCH_NAME = re.compile(r"^(?P<prompt>.+)-(?P<index>\d+)$")


@dataclass
class Failure:
    path: str
    error: str
    reward: str | None = None  # None: the file itself failed (unreadable, no prompt)


def find_videos(paths: Iterable[str | os.PathLike]) -> tuple[list[Path], list[Failure]]:
    """Expand folders (recursively, video suffixes only), globs and files into a sorted, de-duplicated list.

    A folder without video files but with PNG frames counts as one video. A path that matches nothing is
    returned as a failure.
    """
    found: list[Path] = []
    missing: list[Failure] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            videos = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in VIDEO_SUFFIXES)
            if not videos and any(q.suffix.lower() == ".png" for q in p.iterdir()):
                videos = [p]
            found.extend(videos)
        elif p.exists():
            found.append(p)
        elif glob.has_magic(str(raw)):
            hits = sorted(Path(h) for h in glob.glob(os.path.expanduser(str(raw)), recursive=True))
            hits = [h for h in hits if h.is_dir() or h.suffix.lower() in VIDEO_SUFFIXES]
            if not hits:
                missing.append(Failure(str(raw), "no video matches this pattern"))
            found.extend(hits)
        else:
            missing.append(Failure(str(raw), "no such file or folder"))
    unique: dict[Path, None] = {}
    for f in found:
        unique.setdefault(f, None)
    return list(unique), missing


def read_prompts_file(path: str | os.PathLike) -> dict[str, str] | list[str]:
    """Read prompts from CSV / JSONL / TXT: a mapping video -> prompt, or an ordered list of prompts.

    CSV: a header with ``prompt`` and optionally one of video/path/file/filename/name. JSONL: one object per line
    with ``prompt`` (and optionally a video key); JSON: a list of such objects or ``{video: prompt}``. TXT:
    ``name<TAB>prompt`` per line, or one prompt per line. Without video names the i-th prompt goes to the i-th
    video, in the order the paths were given (each folder sorted).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"prompts file not found: {path}")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = [{k.strip().lower(): (v or "").strip() for k, v in r.items() if k} for r in csv.DictReader(io.StringIO(text))]
        return _rows_to_prompts(rows, path)
    if suffix == ".json":  # a list of {"video", "prompt"} objects, or {video: prompt}
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from None
        if isinstance(obj, dict) and all(isinstance(v, str) for v in obj.values()):
            return dict(obj)
        if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
            raise ConfigError(f'{path} must hold a list of {{"video": ..., "prompt": ...}} objects or {{video: prompt}}')
        return _rows_to_prompts([{str(k).lower(): str(v) for k, v in r.items()} for r in obj], path)
    if suffix == ".jsonl":
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{path} line {i} is not JSON ({err.msg}); write one JSON object per line") from None
            if not isinstance(obj, dict):
                raise ConfigError(f'{path} line {i} must be an object like {{"video": ..., "prompt": ...}}')
            rows.append({str(k).lower(): str(v) for k, v in obj.items()})
        return _rows_to_prompts(rows, path)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if lines and all("\t" in ln for ln in lines):
        return {k.strip(): v.strip() for k, v in (ln.split("\t", 1) for ln in lines)}
    return [ln.strip() for ln in lines]


def _rows_to_prompts(rows: list[dict[str, str]], path: Path) -> dict[str, str] | list[str]:
    if not rows:
        raise ConfigError(f"{path} holds no prompts")
    if "prompt" not in rows[0]:
        raise ConfigError(f"{path} has no 'prompt' column/key; found: {', '.join(rows[0]) or 'nothing'}")
    key = next((k for k in _VIDEO_COLUMNS if k in rows[0]), None)
    if key is None:
        return [r["prompt"] for r in rows]
    return {r[key]: r["prompt"] for r in rows if r.get(key)}


def resolve_prompts(
    videos: Sequence[Path], prompts: Mapping[str, str] | Sequence[str] | None
) -> tuple[dict[Path, tuple[str, str]], list[Failure]]:
    """Each video's (prompt, source); videos without a prompt come back as failures."""
    if isinstance(prompts, Sequence) and not isinstance(prompts, str):
        if len(prompts) != len(videos):
            raise ConfigError(
                f"the prompts file lists {len(prompts)} prompts for {len(videos)} videos; give one prompt per video "
                "in order, or name each video (CSV/JSONL video column, or TXT 'name<TAB>prompt')"
            )
        return {v: (p, "prompts-file") for v, p in zip(videos, prompts, strict=True)}, []
    table = dict(prompts or {})
    found: dict[Path, tuple[str, str]] = {}
    failures: list[Failure] = []
    for video in videos:
        prompt = _lookup(table, video)
        if prompt is not None:
            found[video] = (prompt, "prompts-file")
            continue
        sidecar = video.with_suffix(".txt") if video.is_file() else video.parent / f"{video.name}.txt"
        if sidecar.is_file() and sidecar.read_text(encoding="utf-8").strip():
            found[video] = (sidecar.read_text(encoding="utf-8").strip(), "sidecar")
            continue
        match = _VBENCH_NAME.match(video.stem if video.is_file() else video.name)
        if match and not _file_like(match["prompt"]):
            found[video] = (match["prompt"].strip(), "vbench-name")
            continue
        if match:  # "s-0.mp4", "clip_3-1.mp4": a file name, not a prompt; never score against it
            failures.append(Failure(str(video), f"ambiguous name: '{match['prompt']}' reads as a file name, not a "
                                                f"prompt; add {sidecar.name} or list it in --prompts FILE"))
            continue
        hint = "the prompts file" if table else "--prompts FILE"
        failures.append(Failure(str(video), f"no prompt: add {sidecar.name}, list it in {hint}, or name it '{{prompt}}-0{video.suffix}'"))
    return found, failures


def _file_like(stem: str) -> bool:
    """A VBench-style stem that reads as a file name rather than a prompt: under 3 characters, an underscore,
    or no letter ("s", "out_2", "0001"). VBench's own one-word prompts ("alley", "bakery") are prompts."""
    stem = stem.strip()
    return len(stem) < 3 or "_" in stem or not any(c.isalpha() for c in stem)


def _lookup(table: Mapping[str, str], video: Path) -> str | None:
    for key in (str(video), str(video.resolve()), video.name, video.stem):
        if key in table:
            return table[key]
    return None
