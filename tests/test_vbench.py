"""VBench: the standard-mode generation plan, ``sample --vbench``, and ``vbench-score``'s totals.

Published numbers used below (percent, as printed):

* Per-dimension scores: VBench++ (Huang et al., arXiv:2411.13503v1), Table II "Text-to-Video Evaluation Results
  per Dimension". Goku (arXiv:2502.04896), Table 8, prints the same 16 numbers for the models both list.
* Totals: Goku, Table 7 "Comparison with leading T2V models on VBench" (Quality, Semantic, Total); the Totals of
  VideoCrafter2 (80.44) and ModelScope (75.75) are also T2V-Turbo's (arXiv:2405.18750) Table 1, see
  shared/FORMATS.md section 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from t2vturbo.errors import ConfigError
from t2vturbo.vbench import (
    DIMENSIONS,
    QUALITY_DIMENSIONS,
    SEMANTIC_DIMENSIONS,
    WEIGHTS,
    plan_vbench,
    read_eval_results,
    read_info,
    vbench_totals,
)

# VBench++ Table II, in VBench's dimension order (scripts/constant.py TASK_INFO): subject, background, flickering,
# motion smoothness, dynamic degree, aesthetic, imaging, object class, multiple objects, human action, color,
# spatial relationship, scene, appearance style, temporal style, overall consistency.
PUBLISHED_DIMENSIONS = {
    "VideoCrafter-2.0": [96.85, 98.22, 98.41, 97.73, 42.50, 63.13, 67.22, 92.55, 40.66, 95.00, 92.92, 35.86, 55.29,
                         25.13, 25.84, 28.23],
    "ModelScope": [89.87, 95.29, 98.28, 95.79, 66.39, 52.06, 58.57, 82.25, 38.98, 92.40, 81.72, 33.68, 39.26, 23.39,
                   25.37, 25.67],
    "Show-1": [95.53, 98.02, 99.12, 98.24, 44.44, 57.35, 58.66, 93.07, 45.47, 95.60, 86.35, 53.50, 47.03, 23.06, 25.28,
               27.46],
    "AnimateDiff-v2": [95.30, 97.68, 98.75, 97.76, 40.83, 67.16, 70.10, 90.90, 36.88, 92.60, 87.47, 34.60, 50.19,
                       22.42, 26.03, 27.04],
    "Pika-1.0": [96.94, 97.36, 99.74, 99.50, 47.50, 62.04, 61.87, 88.72, 43.08, 86.20, 90.57, 61.03, 49.83, 22.26,
                 24.22, 25.94],
    "Kling": [98.33, 97.60, 99.30, 99.40, 46.94, 61.21, 65.62, 87.24, 68.05, 93.40, 89.90, 73.03, 50.86, 19.62, 24.17,
              26.42],
    "Gen-3": [97.10, 96.62, 98.61, 99.23, 60.14, 63.34, 66.82, 87.81, 53.64, 96.40, 80.90, 65.09, 54.57, 24.31, 24.71,
              26.69],
    "CogVideoX-5B": [96.23, 96.52, 98.66, 96.92, 70.97, 61.98, 62.90, 85.23, 62.11, 99.40, 82.81, 66.35, 53.20, 24.91,
                     25.38, 27.59],
}

# (Quality, Semantic, Total): Goku Table 7; ModelScope's Total from T2V-Turbo Table 1 (its Quality and Semantic
# are not in either table, so they are not checked).
PUBLISHED_TOTALS = {
    "VideoCrafter-2.0": (82.20, 73.42, 80.44),
    "ModelScope": (None, None, 75.75),
    "Show-1": (80.42, 72.98, 78.93),
    "AnimateDiff-v2": (82.90, 69.75, 80.27),
    "Pika-1.0": (82.92, 71.77, 80.69),
    "Kling": (83.39, 75.68, 81.85),
    "Gen-3": (84.11, 75.17, 82.32),
    "CogVideoX-5B": (82.75, 77.04, 81.61),
}


def _write_results(folder: Path, percents: list[float], skip: tuple[str, ...] = ()) -> Path:
    """One ``{dimension}_eval_results.json`` per dimension, as separate ``VBench.evaluate`` runs leave them:
    ``{dimension: [aggregate (0-1), [per-video results]]}``."""
    folder.mkdir(parents=True, exist_ok=True)
    for dim, pct in zip(DIMENSIONS, percents, strict=True):
        if dim in skip:
            continue
        per_video = [{"video_path": f"videos/{dim}-0.mp4", "video_results": pct / 100}]
        (folder / f"{dim}_eval_results.json").write_text(json.dumps({dim: [pct / 100, per_video]}))
    (folder / "run_full_info.json").write_text("[]")  # VBench writes these beside; they must be ignored
    return folder


# ------------------------------------------------------------------------------------------------------- totals
def test_constants_are_vbenchs_groups_and_weights():
    assert len(DIMENSIONS) == 16 and set(QUALITY_DIMENSIONS) | set(SEMANTIC_DIMENSIONS) == set(DIMENSIONS)
    assert sum(WEIGHTS[d] for d in QUALITY_DIMENSIONS) == 6.5 and sum(WEIGHTS[d] for d in SEMANTIC_DIMENSIONS) == 9


@pytest.mark.parametrize("model", sorted(PUBLISHED_TOTALS))
def test_published_totals_from_published_dimensions(tmp_path, model):
    scores, sources = read_eval_results([_write_results(tmp_path / model, PUBLISHED_DIMENSIONS[model])])
    got = vbench_totals(scores, sources)
    assert not got.missing
    for name, want, value in zip(("quality", "semantic", "total"), PUBLISHED_TOTALS[model],
                                 (got.quality, got.semantic, got.total), strict=True):
        if want is not None:
            assert abs(100 * value - want) <= 0.015, (model, name, 100 * value, want)


def test_vbench_score_cli_table_and_json(tmp_path):
    from t2vturbo_cli.main import app

    folder = _write_results(tmp_path / "vc2", PUBLISHED_DIMENSIONS["VideoCrafter-2.0"])
    out = tmp_path / "report" / "vc2.json"
    res = CliRunner().invoke(app, ["vbench-score", str(folder), "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "80.44" in res.output and "82.20" in res.output and "73.42" in res.output
    report = json.loads(out.read_text())
    assert abs(report["total"] - 80.44) <= 0.015 and report["missing"] == [] and report["not_computed"] == []
    assert report["dimensions"]["dynamic_degree"]["weight"] == 0.5
    assert abs(report["dimensions"]["scene"]["score"] - 55.29) < 1e-9
    assert [p.name for p in out.parent.iterdir()] == ["vc2.json"]  # written atomically: no temporary left


def test_a_missing_dimension_is_marked_and_its_totals_not_computed(tmp_path):
    from t2vturbo_cli.main import app

    folder = _write_results(tmp_path / "vc2", PUBLISHED_DIMENSIONS["VideoCrafter-2.0"], skip=("color",))
    out = tmp_path / "vc2.json"
    res = CliRunner().invoke(app, ["vbench-score", str(folder), "--json", str(out)])
    assert res.exit_code == 1, res.output
    assert "missing" in res.output and "color" in res.output and "not computed" in res.output
    report = json.loads(out.read_text())
    assert report["dimensions"]["color"] is None and report["missing"] == ["color"]
    assert report["semantic"] is None and report["total"] is None
    assert abs(report["quality"] - 82.20) <= 0.015  # the quality group is whole
    assert report["not_computed"] == ["semantic", "total"]
    # the library says the same, and never counts a missing dimension as zero
    totals = vbench_totals({d: v / 100 for d, v in zip(DIMENSIONS, PUBLISHED_DIMENSIONS["Gen-3"], strict=True)
                            if d != "dynamic_degree"})
    assert totals.missing == ["dynamic_degree"] and totals.quality is None and totals.total is None
    assert totals.semantic is not None


def test_results_in_one_file_or_several(tmp_path):
    """One VBench.evaluate run with every dimension writes one file; a dimension repeated with the same score is
    fine, with a different one it is an error."""
    values = {d: [v / 100, []] for d, v in zip(DIMENSIONS, PUBLISHED_DIMENSIONS["Show-1"], strict=True)}
    one = tmp_path / "show1_eval_results.json"
    one.write_text(json.dumps(values))
    again = tmp_path / "again" / "scene_eval_results.json"
    again.parent.mkdir()
    again.write_text(json.dumps({"scene": values["scene"]}))
    scores, sources = read_eval_results([one, again.parent])
    assert abs(100 * vbench_totals(scores).total - 78.93) <= 0.015 and sources["scene"] == str(one)
    again.write_text(json.dumps({"scene": [0.5, []]}))
    with pytest.raises(ConfigError, match="two different scores"):
        read_eval_results([one, again])


@pytest.mark.parametrize("content, message", [
    ('{"camera_motion": [0.5, []]}', "unknown VBench dimension 'camera_motion'"),
    ("{not json", "not valid JSON"),
    ('{"scene": 0.5}', "must be a list (aggregate, per-video results)"),
    ('{"scene": [55.29, []]}', "outside VBench's 0-1 scale"),
    ('{"scene": ["high", []]}', "must be a number"),
    ("[]", "not a VBench results file"),
])
def test_bad_results_are_one_line_errors(tmp_path, content, message):
    from t2vturbo_cli.main import app

    bad = tmp_path / "x_eval_results.json"
    bad.write_text(content)
    res = CliRunner().invoke(app, ["vbench-score", str(bad)])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_missing_results_paths_are_one_line_errors(tmp_path):
    from t2vturbo_cli.main import app

    for args, message in (([str(tmp_path / "nope.json")], "VBench results not found"),
                          ([str(tmp_path)], "no *_eval_results.json under")):
        res = CliRunner().invoke(app, ["vbench-score", *args])
        assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output


# --------------------------------------------------------------------------------------------------------- plan
INFO = [
    {"prompt_en": "a cat, frozen in time", "dimension": ["temporal_flickering"]},
    {"prompt_en": "a dog running", "dimension": ["subject_consistency", "dynamic_degree", "motion_smoothness"]},
    {"prompt_en": "a still lake", "dimension": ["temporal_flickering", "scene"]},
    {"prompt_en": "a red car", "dimension": ["color"]},
    {"prompt_en": "a red car", "dimension": ["overall_consistency"]},  # a prompt listed twice, as VBench's list does
    {"prompt_en": "The bund Shanghai, oil painting", "dimension": ["appearance_style"]},
]


def _info(tmp_path: Path, entries=INFO) -> Path:
    path = tmp_path / "VBench_full_info.json"
    path.write_text(json.dumps(entries))
    return path


def test_plan_names_and_counts(tmp_path):
    out = tmp_path / "videos"
    plan = plan_vbench(read_info(_info(tmp_path)), out)
    names = [p.path.name for p in plan.videos]
    want = {"a cat, frozen in time": 25, "a dog running": 5, "a still lake": 25, "a red car": 5,
            "The bund Shanghai, oil painting": 5}
    assert plan.prompts == want
    assert names == [f"{p}-{i}.mp4" for p, n in want.items() for i in range(n)]
    assert all(p.path.parent == out for p in plan.videos) and len(set(names)) == len(names) == 65
    assert [p.seed for p in plan.videos] == list(range(65))
    remaining = plan.remaining(lambda p: p.name.startswith("a still lake-"))  # as if the lake's 25 were written
    assert remaining["temporal_flickering"] == (2, 50, 25)
    assert remaining["scene"] == (1, 5, 0)  # scene reads the first 5 of the lake's 25
    assert remaining["color"] == remaining["overall_consistency"] == (1, 5, 5)
    assert set(plan.dimensions) == {d for e in INFO for d in e["dimension"]}


def test_plan_for_some_dimensions_keeps_the_full_runs_seeds(tmp_path):
    entries = read_info(_info(tmp_path))
    full = {p.path.name: p.seed for p in plan_vbench(entries, tmp_path, seed=7).videos}
    part = plan_vbench(entries, tmp_path, ["scene", "Color"], seed=7)  # a dimension's case and spaces don't matter
    assert part.dimensions == ("color", "scene")
    assert [p.path.name for p in part.videos] == [f"a still lake-{i}.mp4" for i in range(5)] + [
        f"a red car-{i}.mp4" for i in range(5)]
    assert all(full[p.path.name] == p.seed for p in part.videos)


@pytest.mark.parametrize("entries, message", [
    ([{"prompt_en": "a cat", "dimension": ["sharpness"]}], "unknown VBench dimension 'sharpness'"),
    ([{"prompt_en": "a cat"}], "needs a 'dimension' list"),
    ([{"dimension": ["scene"]}], "has no prompt_en"),
    ({"prompt_en": "a cat"}, "must hold a non-empty list"),
    ([], "must hold a non-empty list"),
])
def test_bad_prompt_lists_are_one_line_errors(tmp_path, entries, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("'", "'")):
        read_info(_info(tmp_path, entries))


def test_the_installed_packages_list_is_found_without_importing_it(tmp_path, monkeypatch):
    package = tmp_path / "site" / "vbench"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('vbench must not be imported to find its prompt list')\n")
    (package / "VBench_full_info.json").write_text(json.dumps(INFO))
    monkeypatch.syspath_prepend(str(package.parent))
    monkeypatch.delitem(sys.modules, "vbench", raising=False)
    entries = read_info("installed")
    assert [e.prompt for e in entries][:2] == ["a cat, frozen in time", "a dog running"]
    assert "vbench" not in sys.modules
    assert read_info(package.parent) == entries  # a folder holding vbench/VBench_full_info.json


# ---------------------------------------------------------------------------------------------- sample --vbench
def _sample(args: list[str]):
    from t2vturbo_cli.main import app

    return CliRunner().invoke(app, ["sample", *args, "--model", "tiny", "--steps", "1", "--frames", "2",
                                    "--height", "32", "--width", "32", "--device", "cpu"])


def test_sample_vbench_writes_the_dimensions_videos_and_resumes(tmp_path):
    info, out = _info(tmp_path), tmp_path / "vbench"
    res = _sample(["--vbench", str(info), "--vbench-dimension", "color", "--out", str(out)])
    assert res.exit_code == 0, res.output
    want = {f"a red car-{i}.mp4" for i in range(5)}
    assert {p.name for p in out.iterdir()} == want  # videos only: no prompt sidecars for VBench to trip on
    assert "0 already there, 5 to write" in res.output and "all 5 videos are in" in res.output

    res = _sample(["--vbench", str(info), "--vbench-dimension", "color", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "5 already there, 0 to write" in res.output and "wrote" not in res.output

    (out / "a red car-3.mp4").unlink()
    (out / "a red car-0.txt").write_text("a red car\n")  # a prompt sidecar, as a plain `sample` run leaves
    (out / "notes.md").write_text("mine")
    res = _sample(["--vbench", str(info), "--vbench-dimension", "color", "--vbench-dimension", "overall_consistency",
                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "4 already there, 1 to write" in res.output
    assert res.output.count("wrote ") == 1 and "a red car-3.mp4" in res.output
    assert "holds files that are not .mp4 videos (1, e.g. notes.md)" in res.output
    assert {p.name for p in out.iterdir()} == want | {"notes.md"}


@pytest.mark.parametrize("extra, message", [
    (["--vbench-dimension", "flicker"], "unknown VBench dimension 'flicker'"),
    (["--vbench-dimension", "human_action"], "no prompt of this list is for it"),
    (["--videos-per-prompt", "3"], "leave out --videos-per-prompt"),
    (["--format", "webm"], "use --format mp4 or gif"),
    (["--format", "gif", "--vbench-dimension", "temporal_flickering"], "temporal_flickering needs --format mp4"),
    (["a prompt"], "leave out the prompts"),
])
def test_sample_vbench_bad_input_is_one_line(tmp_path, extra, message):
    res = _sample(["--vbench", str(_info(tmp_path)), "--out", str(tmp_path / "v"), *extra])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "v").exists()


def test_sample_vbench_missing_or_malformed_list(tmp_path):
    res = _sample(["--vbench", str(tmp_path / "missing.json"), "--out", str(tmp_path / "v")])
    assert res.exit_code == 2 and "VBench prompt list not found" in res.output
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    res = _sample(["--vbench", str(bad), "--out", str(tmp_path / "v")])
    assert res.exit_code == 2 and "is not valid JSON" in res.output and "Traceback" not in res.output
    res = _sample(["--vbench", str(_info(tmp_path))])
    assert res.exit_code == 2 and "--vbench needs --out DIR" in res.output
    res = _sample(["x", "--vbench-dimension", "scene"])
    assert res.exit_code == 2 and "give --vbench INFO too" in res.output
