"""The main job's own quick check (t2vturbo.tiny.check) and the caption the closing hint suggests."""

import json

import pytest
from conftest import REPO

from t2vturbo.config import load_recipe
from t2vturbo.data import example_caption
from t2vturbo.tiny.check import RECORDED_FILE, quick_check
from t2vturbo.tiny.world import all_captions

KEYS = {"videos", "steps", "guidance", "seed", "colour", "shape", "direction", "all_three", "seconds",
        "teacher_recorded"}


@pytest.fixture(scope="module")
def student():
    """The shipped tiny teacher carrying a fresh (untrained) rank-4 student adapter."""
    from t2vturbo.student import LoraSettings, make_student
    from t2vturbo.teachers import load_teacher

    parts = load_teacher("tiny")
    make_student(parts, LoraSettings(rank=4))  # the teacher-protocol signature (student.py, issue 27)
    return parts


def test_quick_check_judges_the_student_writes_check_json_and_logs_one_line(tmp_path, student):
    recipe = load_recipe(REPO / "recipes" / "tiny.yaml")
    lines = []
    res = quick_check(student, recipe, tmp_path, log=lines.append, videos=8)
    assert set(res) == KEYS
    assert res["videos"] == 8 and res["steps"] == 4 and res["guidance"] == recipe.sample.guidance
    for key in ("colour", "shape", "direction", "all_three"):
        assert 0.0 <= res[key] <= 1.0, key
        assert res[key] * 8 == pytest.approx(round(res[key] * 8)), key  # a count of the 8 videos
    assert res["all_three"] <= min(res["colour"], res["shape"], res["direction"])
    assert res["seconds"] > 0
    assert json.loads((tmp_path / "check.json").read_text()) == res
    assert [p.name for p in tmp_path.iterdir()] == ["check.json"]  # atomic: no temporary left
    # the teacher's figure comes from the shipped file, with its source
    assert res["teacher_recorded"]["all_three"] == 0.91 and res["teacher_recorded"]["videos"] == 192
    assert res["teacher_recorded"]["steps"] == 50
    assert "eval_tiny.py" in json.loads(RECORDED_FILE.read_text())["about"]
    assert len(lines) == 1
    assert lines[0].startswith(f"check: 4-step student, all three attributes right in {res['all_three']:.2f} of 8 "
                               "videos (colour ")
    assert lines[0].endswith("the 50-step teacher: 0.91 of 192 (recorded)")


@pytest.mark.parametrize("overrides", [["data.source=folder", "data.path=/nowhere"],
                                       ["model.teacher=/some/other/teacher"]])
def test_quick_check_is_silent_off_the_tiny_world(tmp_path, overrides):
    recipe = load_recipe(REPO / "recipes" / "tiny.yaml", overrides, check=False)
    lines = []
    assert quick_check(object(), recipe, tmp_path, log=lines.append) is None
    assert lines == [] and list(tmp_path.iterdir()) == []


def test_example_caption_of_the_tiny_world():
    recipe = load_recipe(REPO / "recipes" / "tiny.yaml")
    assert example_caption(recipe) == "a red circle moving left" == all_captions()[0]


def test_example_caption_reads_only_the_first_row_of_a_folder(tmp_path):
    (tmp_path / "captions.csv").write_text('path,caption\nclip0.mp4,"a dog, running  on a beach"\n'
                                           'clip1.mp4,a cat\n')
    recipe = load_recipe(REPO / "recipes" / "tiny.yaml", ["data.source=folder", f"data.path={tmp_path}"])
    assert example_caption(recipe) == "a dog, running on a beach"
    other = tmp_path / "other.jsonl"
    other.write_text('\n{"path": "a.mp4", "caption": "waves at dusk"}\nnot json at all\n')
    recipe = load_recipe(REPO / "recipes" / "tiny.yaml",
                         ["data.source=folder", f"data.path={tmp_path}", f"data.captions={other}"])
    assert example_caption(recipe) == "waves at dusk"  # the broken row after it is never read


def test_example_caption_is_none_without_a_readable_captions_file(tmp_path):
    recipe = load_recipe(REPO / "recipes" / "tiny.yaml", ["data.source=folder", f"data.path={tmp_path}"],
                         check=False)
    assert example_caption(recipe) is None
    (tmp_path / "captions.csv").write_text("file,text\na.mp4,hello\n")  # wrong columns
    assert example_caption(recipe) is None
