"""The embedded tiny text-to-video world: a small ModelScope-architecture teacher that runs on a CPU.

``load_tiny_teacher()`` loads the trained weights shipped in ``t2vturbo/tiny/weights/teacher`` when present,
else builds the same architecture with random weights from a fixed seed (no downloads either way).
"""

from .teacher import TINY_WEIGHTS_DIR, build_tiny_teacher, load_tiny_teacher

__all__ = ["TINY_WEIGHTS_DIR", "build_tiny_teacher", "load_tiny_teacher"]
