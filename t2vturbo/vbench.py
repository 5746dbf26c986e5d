"""VBench: the videos its standard mode expects, and its Quality / Semantic / Total scores.

Two halves, both light (no torch at import):

* **Generation plan.** :func:`read_info` reads VBench's own prompt list, ``VBench_full_info.json`` (a list of
  ``{"prompt_en": ..., "dimension": [...]}``), from a path or from the installed ``vbench`` package (located
  without importing it). :func:`plan_vbench` turns it into the files VBench's standard mode looks for:
  ``{prompt}-{i}.mp4`` (:func:`t2vturbo.names.vbench_name`) for i < 5, and i < 25 for a ``temporal_flickering``
  prompt, of which VBench's ``static_filter.py`` keeps 5 static ones (in another folder) for that dimension. A
  prompt listed under several dimensions (or twice) is generated once, with the largest count any of them needs.
* **Totals.** :func:`read_eval_results` reads the ``*_eval_results.json`` files ``VBench.evaluate`` writes
  (``{dimension: [aggregate, [per-video ...]]}``) and :func:`vbench_totals` computes what VBench's leaderboard
  reports: each dimension normalised by VBench's min/max, dynamic degree weighted 0.5, Quality the weighted mean
  of the 7 quality dimensions, Semantic of the 9 semantic ones, Total = (4 Quality + Semantic) / 5. A dimension
  with no result is reported missing; a group that lacks one is not computed (never a silent zero, which is
  what VBench's own ``cal_final_score.py`` does).

The constants are VBench's (github.com/Vchitect/VBench, ``scripts/constant.py``, read at commit 45e79ec1):
``NORMALIZE_DIC``, ``DIM_WEIGHT``, ``QUALITY_LIST``, ``SEMANTIC_LIST``, ``QUALITY_WEIGHT`` and
``SEMANTIC_WEIGHT``; the formulas are ``scripts/cal_final_score.py``'s ``get_nomalized_score``,
``get_quality_score``, ``get_semantic_score`` and ``get_final_score``. The counts per prompt are
``prompts/README.md``'s ("For each prompt, sample 5 videos. However, for the Temporal Flickering dimension, sample
25 videos"); the name rule is ``vbench/__init__.py``'s ``build_full_info_json`` (``f'{prompt}-{i}{postfix}'``).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .names import vbench_name

#: VBench's 16 dimensions, in ``scripts/constant.py``'s ``TASK_INFO`` order (its spaces as underscores, the
#: spelling ``VBench.evaluate`` uses for keys and ``--dimension``)
DIMENSIONS: tuple[str, ...] = (
    "subject_consistency", "background_consistency", "temporal_flickering", "motion_smoothness",
    "dynamic_degree", "aesthetic_quality", "imaging_quality", "object_class", "multiple_objects", "human_action",
    "color", "spatial_relationship", "scene", "appearance_style", "temporal_style", "overall_consistency",
)

#: ``scripts/constant.py`` ``QUALITY_LIST`` (7 dimensions; weights sum to 6.5)
QUALITY_DIMENSIONS: tuple[str, ...] = (
    "subject_consistency", "background_consistency", "temporal_flickering", "motion_smoothness",
    "aesthetic_quality", "imaging_quality", "dynamic_degree",
)

#: ``scripts/constant.py`` ``SEMANTIC_LIST`` (9 dimensions; weights sum to 9)
SEMANTIC_DIMENSIONS: tuple[str, ...] = (
    "object_class", "multiple_objects", "human_action", "color", "spatial_relationship", "scene",
    "appearance_style", "temporal_style", "overall_consistency",
)

#: ``scripts/constant.py`` ``NORMALIZE_DIC``: (Min, Max) of each raw score (VBench++, arXiv:2411.13503, Table II
#: prints the same numbers as its "Empirical Min / Max" rows)
NORMALIZATION: dict[str, tuple[float, float]] = {
    "subject_consistency": (0.1462, 1.0),
    "background_consistency": (0.2615, 1.0),
    "temporal_flickering": (0.6293, 1.0),
    "motion_smoothness": (0.706, 0.9975),
    "dynamic_degree": (0.0, 1.0),
    "aesthetic_quality": (0.0, 1.0),
    "imaging_quality": (0.0, 1.0),
    "object_class": (0.0, 1.0),
    "multiple_objects": (0.0, 1.0),
    "human_action": (0.0, 1.0),
    "color": (0.0, 1.0),
    "spatial_relationship": (0.0, 1.0),
    "scene": (0.0, 0.8222),
    "appearance_style": (0.0009, 0.2855),
    "temporal_style": (0.0, 0.364),
    "overall_consistency": (0.0, 0.364),
}

#: ``scripts/constant.py`` ``DIM_WEIGHT``: every dimension 1 but dynamic degree 0.5
WEIGHTS: dict[str, float] = {d: (0.5 if d == "dynamic_degree" else 1.0) for d in DIMENSIONS}

#: ``scripts/constant.py`` ``QUALITY_WEIGHT`` and ``SEMANTIC_WEIGHT``: Total = (4 Quality + 1 Semantic) / 5
QUALITY_WEIGHT = 4.0
SEMANTIC_WEIGHT = 1.0

#: videos per prompt in VBench's standard mode (``prompts/README.md``), and the dimensions that need more
VIDEOS_PER_PROMPT = 5
VIDEOS_PER_PROMPT_FOR = {"temporal_flickering": 25}

#: the prompt list's file name, inside the ``vbench`` package (``vbench/VBench_full_info.json``)
INFO_FILE = "VBench_full_info.json"

#: ``--vbench installed`` reads the copy inside the installed ``vbench`` package
INSTALLED = "installed"

#: the file formats VBench reads in its standard mode (its README: ``{prompt}-{index}.mp4/gif``)
VBENCH_FORMATS = ("mp4", "gif")

# Messages avoid "[word ...]": the CLI prints them as rich markup, which would swallow it as a tag.
_GROUP = {**{d: "quality" for d in QUALITY_DIMENSIONS}, **{d: "semantic" for d in SEMANTIC_DIMENSIONS}}


def dimension_name(name: str, where: str = "") -> str:
    """``name`` as one of :data:`DIMENSIONS` (spaces and hyphens read as underscores, any case); a one-line
    error naming ``where`` otherwise."""
    key = str(name).strip().lower().replace(" ", "_").replace("-", "_")
    if key not in NORMALIZATION:
        at = f"{where}: " if where else ""
        raise ConfigError(f"{at}unknown VBench dimension {name!r}; VBench's 16 are {', '.join(DIMENSIONS)}")
    return key


def videos_for(dimensions: Iterable[str]) -> int:
    """Videos a prompt needs for ``dimensions``: the most any of them asks (5, or 25 for temporal_flickering)."""
    return max((VIDEOS_PER_PROMPT_FOR.get(d, VIDEOS_PER_PROMPT) for d in dimensions), default=VIDEOS_PER_PROMPT)


# --------------------------------------------------------------------------------------------------- prompt list
@dataclass(frozen=True)
class InfoEntry:
    """One prompt of the list and the dimensions it serves (repeats of a prompt merged, in first-seen order)."""

    prompt: str
    dimensions: tuple[str, ...]


def installed_info_path() -> Path:
    """``VBench_full_info.json`` inside the installed ``vbench`` package, found without importing it (its
    ``__init__`` pulls in torch and its evaluation models)."""
    try:
        spec = importlib.util.find_spec("vbench")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("--vbench installed: the vbench package is not installed here; pip install vbench, or "
                          f"give the path of {INFO_FILE} (in VBench's repository: vbench/{INFO_FILE})")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / INFO_FILE
        if path.is_file():
            return path
    raise ConfigError(f"the installed vbench package ({', '.join(spec.submodule_search_locations)}) has no "
                      f"{INFO_FILE}; give its path instead")


def info_path(source: str | os.PathLike) -> Path:
    """The prompt-list file ``source`` names: a file, a folder holding it (VBench's repository or its package
    folder), or ``installed``."""
    path = Path(source)
    if str(source) == INSTALLED and not path.exists():
        return installed_info_path()
    if path.is_dir():
        for candidate in (path / INFO_FILE, path / "vbench" / INFO_FILE):
            if candidate.is_file():
                return candidate
        raise ConfigError(f"{path} is a folder without {INFO_FILE} (nor vbench/{INFO_FILE}); give the file's path")
    if not path.is_file():
        raise ConfigError(f"VBench prompt list not found: {path}; give the path of {INFO_FILE} or "
                          f"'--vbench {INSTALLED}' for the installed vbench package's copy")
    return path


def read_info(source: str | os.PathLike) -> list[InfoEntry]:
    """VBench's prompt list from ``source`` (see :func:`info_path`), checked: a JSON list of objects with a
    non-empty ``prompt_en`` and a ``dimension`` list of VBench dimensions. Repeats of a prompt are merged."""
    path = info_path(source)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}); give VBench's "
                          f"{INFO_FILE}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from None
    if not isinstance(data, list) or not data:
        raise ConfigError(f'{path} must hold a non-empty list of {{"prompt_en": ..., "dimension": [...]}} '
                          f"objects, as VBench's {INFO_FILE} does")
    merged: dict[str, list[str]] = {}
    for i, entry in enumerate(data):
        where = f"{path} entry {i}"
        if not isinstance(entry, dict):
            raise ConfigError(f'{where} is not an object like {{"prompt_en": ..., "dimension": [...]}}')
        prompt, dims = entry.get("prompt_en"), entry.get("dimension")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError(f"{where} has no prompt_en text")
        if isinstance(dims, str):
            dims = [dims]
        if not isinstance(dims, list) or not dims or not all(isinstance(d, str) for d in dims):
            raise ConfigError(f"{where} ({prompt!r}) needs a 'dimension' list of VBench dimension names")
        known = merged.setdefault(prompt, [])
        for d in dims:
            name = dimension_name(d, where)
            if name not in known:
                known.append(name)
    return [InfoEntry(p, tuple(d)) for p, d in merged.items()]


# ------------------------------------------------------------------------------------------------------ the plan
@dataclass
class VBenchPlan:
    """The videos to generate for some VBench dimensions, and which dimension needs which of them."""

    videos: list  # of t2vturbo.generate.Planned, prompt-major, in the prompt list's order
    dimensions: tuple[str, ...]
    prompts: dict[str, int]  # prompt -> videos it needs
    needs: dict[str, list[Path]] = field(default_factory=dict)  # dimension -> the video paths it reads
    dimension_prompts: dict[str, int] = field(default_factory=dict)  # dimension -> its prompts

    def remaining(self, exists: Callable[[Path], bool] = Path.exists) -> dict[str, tuple[int, int, int]]:
        """Per dimension: (prompts, videos it needs, of those not yet on disk)."""
        return {d: (self.dimension_prompts.get(d, 0), len(self.needs.get(d, [])),
                    sum(1 for p in self.needs.get(d, []) if not exists(p))) for d in self.dimensions}


def plan_vbench(entries: Sequence[InfoEntry], out: Path, dimensions: Sequence[str] | None = None,
                fmt: str = "mp4", seed: int = 0) -> VBenchPlan:
    """The videos VBench's standard mode reads for ``dimensions`` (default: every one the list names), written
    as ``out/{prompt}-{i}.{fmt}`` by :func:`t2vturbo.generate.plan_outputs`.

    A prompt gets :func:`videos_for` its selected dimensions. Seeds do not depend on the selection: the prompts'
    videos are numbered over the whole list (every dimension, its largest count), and video i of a prompt numbered
    from k gets ``seed + k + i`` -- so generating a dimension now and another later gives the videos one full run
    would have, and a shared prompt's first 5 videos are the same whether or not temporal_flickering was asked.
    """
    from .generate import plan_outputs

    if fmt not in VBENCH_FORMATS:
        raise ConfigError(f"VBench reads mp4 or gif videos in its standard mode; use --format mp4 or gif, not {fmt!r}")
    out = Path(out)
    if out.suffix.lower() in (".mp4", ".gif", ".webm"):
        raise ConfigError(f"--out {out} names a file; VBench reads a folder of videos, so give --out a folder")
    entries = list(entries)
    if not entries:
        raise ConfigError("the VBench prompt list holds no prompts")
    listed = [d for d in DIMENSIONS if any(d in e.dimensions for e in entries)]
    if dimensions:
        chosen: list[str] = []
        for d in dimensions:
            name = dimension_name(d, "--vbench-dimension")
            if name not in listed:
                raise ConfigError(f"--vbench-dimension {name}: no prompt of this list is for it; the list has "
                                  f"{', '.join(listed)}")
            if name not in chosen:
                chosen.append(name)
        chosen.sort(key=DIMENSIONS.index)
    else:
        chosen = listed
    if fmt != "mp4" and "temporal_flickering" in chosen:
        raise ConfigError("temporal_flickering needs --format mp4: VBench's static_filter.py, which picks its 5 "
                          "videos of 25, reads only *.mp4")
    start, offsets = 0, {}
    for e in entries:  # numbering over the whole list, independent of the selection
        offsets[e.prompt] = start
        start += videos_for(e.dimensions)
    videos, prompts, needs, per_dim = [], {}, {d: [] for d in chosen}, dict.fromkeys(chosen, 0)
    for e in entries:
        dims = [d for d in e.dimensions if d in chosen]
        if not dims:
            continue
        count = videos_for(dims)
        planned = plan_outputs([e.prompt], out, count, fmt, seed + offsets[e.prompt])
        videos += planned
        prompts[e.prompt] = count
        for d in dims:
            needs[d] += [p.path for p in planned[: videos_for([d])]]
            per_dim[d] += 1
    return VBenchPlan(videos, tuple(chosen), prompts, needs, per_dim)


def names_vbench_misreads(prompts: Iterable[str], fmt: str = "mp4") -> list[str]:
    """Prompts whose file name is not VBench's ``f'{prompt}-{i}{postfix}'`` (a '/' or surrounding spaces, which a
    file name cannot hold as is): VBench's standard mode will not find their videos."""
    return [p for p in prompts if vbench_name(p, 0, f".{fmt}") != f"{p}-0.{fmt}"]


def stray_files(folder: Path, fmt: str = "mp4") -> list[Path]:
    """Files in ``folder`` that are not ``.{fmt}`` videos. VBench's standard mode takes the video extension from
    the first name ``os.listdir`` returns (``build_full_info_json``), so any other file there can make it look for
    the wrong names."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.suffix.lower() != f".{fmt}")


# ------------------------------------------------------------------------------------------------------- scoring
@dataclass
class VBenchTotals:
    """Per-dimension scores (VBench's raw aggregate, 0-1) and the totals, in percent as the leaderboard prints
    them; ``None`` where not computable."""

    scores: dict[str, float | None]  # every dimension of DIMENSIONS; None = missing
    sources: dict[str, str] = field(default_factory=dict)  # dimension -> the file it was read from
    normalized: dict[str, float | None] = field(default_factory=dict)  # weighted, normalised, 0-1
    quality: float | None = None
    semantic: float | None = None
    total: float | None = None

    @property
    def missing(self) -> list[str]:
        return [d for d in DIMENSIONS if self.scores.get(d) is None]

    @property
    def complete(self) -> bool:
        return self.total is not None

    def to_json(self) -> dict[str, Any]:
        pct = _percent
        return {
            "units": "percent",
            "dimensions": {
                d: None if self.scores.get(d) is None else {
                    "score": pct(self.scores[d]), "normalized": pct(self.normalized[d]), "weight": WEIGHTS[d],
                    "group": _GROUP[d], "file": self.sources.get(d),
                } for d in DIMENSIONS
            },
            "quality": pct(self.quality),
            "semantic": pct(self.semantic),
            "total": pct(self.total),
            "missing": self.missing,
            "not_computed": [k for k in ("quality", "semantic", "total") if getattr(self, k) is None],
            "method": "VBench scripts/constant.py + scripts/cal_final_score.py: min/max normalisation, dynamic "
                      "degree weighted 0.5, Quality = weighted mean of 7, Semantic of 9, Total = (4 Q + S) / 5; a "
                      "group with a missing dimension is not computed",
        }


def _percent(x: float | None) -> float | None:
    return None if x is None else 100.0 * x


def normalized_score(dimension: str, score: float) -> float:
    """VBench's ``get_nomalized_score`` for one dimension: (score - Min) / (Max - Min) times its weight."""
    low, high = NORMALIZATION[dimension]
    return (score - low) / (high - low) * WEIGHTS[dimension]


def _group(normalized: Mapping[str, float | None], dims: Sequence[str]) -> float | None:
    if any(normalized.get(d) is None for d in dims):
        return None
    return sum(normalized[d] for d in dims) / sum(WEIGHTS[d] for d in dims)


def vbench_totals(scores: Mapping[str, float | None], sources: Mapping[str, str] | None = None) -> VBenchTotals:
    """Quality, Semantic and Total from raw per-dimension scores (VBench's 0-1 aggregates; keys as
    :func:`dimension_name` reads them). A dimension left out or ``None`` is missing, and so is every total that
    needs it."""
    raw: dict[str, float | None] = dict.fromkeys(DIMENSIONS)
    for key, value in scores.items():
        raw[dimension_name(key)] = None if value is None else float(value)
    norm = {d: None if v is None else normalized_score(d, v) for d, v in raw.items()}
    quality = _group(norm, QUALITY_DIMENSIONS)
    semantic = _group(norm, SEMANTIC_DIMENSIONS)
    total = None
    if quality is not None and semantic is not None:
        total = (quality * QUALITY_WEIGHT + semantic * SEMANTIC_WEIGHT) / (QUALITY_WEIGHT + SEMANTIC_WEIGHT)
    return VBenchTotals(raw, dict(sources or {}), norm, quality, semantic, total)


def eval_result_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The results files ``paths`` name: files as given, folders searched (recursively) for
    ``*_eval_results.json``."""
    files: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            found = sorted(path.rglob("*_eval_results.json"))
            if not found:
                raise ConfigError(f"no *_eval_results.json under {path}; give VBench's --output_path folder or "
                                  "the files themselves")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"VBench results not found: {path}")
    if not files:
        raise ConfigError("no VBench results given; name *_eval_results.json files or the folder holding them")
    return list(dict.fromkeys(files))


def read_eval_results(paths: Iterable[str | os.PathLike]) -> tuple[dict[str, float], dict[str, str]]:
    """Each dimension's aggregate score from VBench's ``*_eval_results.json`` files (``{dimension: [aggregate,
    [per-video ...]]}``, one file per ``VBench.evaluate`` run, any number of dimensions each), and the file it came
    from. An unknown dimension, a score outside 0-1, or one dimension given two different scores is an error."""
    scores: dict[str, float] = {}
    sources: dict[str, str] = {}
    for path in eval_result_files(paths):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read {path}: {err}") from None
        if not isinstance(data, dict) or not data:
            raise ConfigError(f"{path} is not a VBench results file: expected an object mapping each dimension to "
                              "its (aggregate, per-video results) list, as VBench.evaluate writes it")
        for key, value in data.items():
            dim = dimension_name(key, str(path))
            if not isinstance(value, (list, tuple)) or not value:
                raise ConfigError(f"{path}: {key} must be a list (aggregate, per-video results) as VBench.evaluate "
                                  f"writes it, got {type(value).__name__}")
            score = value[0]
            if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
                raise ConfigError(f"{path}: {key}'s aggregate must be a number, got {score!r}")
            if not 0.0 <= score <= 1.0:
                raise ConfigError(f"{path}: {key} is {score}, outside VBench's 0-1 scale (a percentage? VBench "
                                  "writes fractions)")
            if dim in scores and not math.isclose(scores[dim], score, rel_tol=0, abs_tol=1e-12):
                raise ConfigError(f"{dim} has two different scores: {scores[dim]} in {sources[dim]} and {score} "
                                  f"in {path}; give one run's results")
            scores.setdefault(dim, float(score))
            sources.setdefault(dim, str(path))
    return scores, sources
