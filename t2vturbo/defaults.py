"""One source for every default a student carries: what ``sample``, ``export`` (and a server) use when the user
gives no option. The order is the same everywhere: the student's own record (``student.json``: its recipe's
video shape, sampling steps and guidance, solver grid, motion settings), then what its file format implies (a
released T2V-Turbo-v2 UNet: the v2 demo's settings), then the model's stored defaults, then the fallbacks below.
"""

from __future__ import annotations

from dataclasses import dataclass

from .motion import DEFAULT_PERCENTAGE, DEFAULT_SCALE, MotionGuidance

#: what applies when neither the student, its format nor the model records a value
FALLBACK_GUIDANCE = 7.5
FALLBACK_STUDENT_STEPS, FALLBACK_TEACHER_STEPS = 4, 50
FALLBACK_ORIGIN_STEPS = 50


@dataclass
class SamplingDefaults:
    """The settings a student (or a teacher) is sampled and exported with when none are given."""

    frames: int
    height: int
    width: int
    fps: int
    guidance: float
    steps: int
    #: the solver grid the student was distilled on (its timesteps are chosen from it)
    origin_steps: int
    #: a motion-guided student's motion condition (None: no motion input)
    motion: MotionGuidance | None = None


def sampling_defaults(teacher, meta: dict | None = None, mode: str = "student",
                      implied: dict | None = None) -> SamplingDefaults:
    """The defaults for ``teacher`` (with its student loaded, if any) in ``mode`` ("student" or "teacher").

    Args:
        meta: what the student records about itself (:func:`t2vturbo.formats.recorded_student_meta`).
        implied: what its file format implies (:meth:`Teacher.load_student_file`'s answer).
    """
    meta, implied = meta or {}, implied or {}
    native = teacher.native_video()
    recorded = meta.get("video") or {}
    shape = {k: int(recorded.get(k) or native[k]) for k in ("frames", "height", "width", "fps")}
    student = mode == "student"
    stored_guidance = teacher.stored_defaults.get("guidance")
    guidance = float((meta.get("default_guidance") if student else None) or stored_guidance or FALLBACK_GUIDANCE)
    steps = int((meta.get("default_steps") or teacher.stored_defaults.get("steps") if student else None)
                or (FALLBACK_STUDENT_STEPS if student else FALLBACK_TEACHER_STEPS))
    schedule = meta.get("schedule") or {}
    origin = int(schedule.get("origin_steps") or schedule.get("num_ddim_timesteps") or implied.get("origin_steps")
                 or FALLBACK_ORIGIN_STEPS)
    motion = None
    if student and teacher.supports_motion:
        trained = meta.get("motion") or {}
        motion = MotionGuidance(
            scale=float(trained.get("scale", implied.get("motion_guidance", DEFAULT_SCALE))),
            percentage=float(trained.get("percentage", implied.get("motion_percentage", DEFAULT_PERCENTAGE))))
    return SamplingDefaults(guidance=guidance, steps=steps, origin_steps=origin, motion=motion, **shape)
