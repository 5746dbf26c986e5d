"""``t2vturbo serve``: a loaded model behind an HTTP API (OpenAI's video-generation shape) and a web page.

- :mod:`.limits`: what a request may ask for (prompt length, steps, frames, size, seeds), checked against the
  loaded model; errors name the request field.
- :mod:`.scheduler`: one worker thread owns the model(s); requests wait in a bounded queue, compatible ones
  (same model and settings) are sampled as one batch through :class:`t2vturbo.generate.LoadedModel`, the core
  ``t2vturbo sample`` uses too.
- :mod:`.app`: the FastAPI app (``/v1/videos``, ``/v1/models``, ``/health``, the page at ``/``) and
  :func:`~.app.run_server` (uvicorn, Ctrl-C / SIGTERM drain the queue and exit 0).

FastAPI and uvicorn are the ``serve`` extra (``pip install "t2vturbo[serve]"``); :mod:`.limits` and
:mod:`.scheduler` need neither.
"""

from __future__ import annotations

from ..errors import ConfigError

#: what ``pip install "t2vturbo[serve]"`` adds
SERVE_MODULES = ("fastapi", "uvicorn")


def require_serve_extra() -> None:
    """One line naming the install command when the server's packages are missing."""
    import importlib.util

    missing = [m for m in SERVE_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"t2vturbo serve needs {' and '.join(missing)}: pip install \"t2vturbo[serve]\"")
