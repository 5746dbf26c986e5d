"""t2vturbo: 4-step text-to-video by consistency distillation with mixed reward feedback (arXiv 2405.18750)."""

__version__ = "0.1.0"
