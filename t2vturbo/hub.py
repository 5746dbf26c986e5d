"""Find model weights: an explicit local path, else the standard Hugging Face cache, else one clear line.

We never download inside tests; users with network access can pre-fetch with
``hf download REPO FILE`` and the cache lookup below finds the file.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import MissingWeightError


def resolve_file(
    explicit: str | os.PathLike | None,
    hub_repo: str | None,
    filename: str,
    how: str,
) -> Path:
    """Return a local path for a weight file.

    Args:
        explicit: a path the user gave (recipe or flag); if given it must exist.
        hub_repo: the official hub repository holding ``filename`` (looked up in the local HF cache only,
            unless HF_HUB_OFFLINE is unset and downloads are allowed by the caller).
        filename: the file name inside the hub repository.
        how: the flag or recipe key that provides the path, named in the error (e.g. ``--reward-checkpoint hpsv2=PATH``).

    Raises:
        MissingWeightError: with one line naming the file, the hub repo and ``how``.
    """
    if explicit:
        p = Path(explicit).expanduser()
        if p.is_dir():
            p = p / filename
        if p.is_file():
            return p
        raise MissingWeightError(f"{filename} not found at {explicit}; give the right path with {how}")
    if hub_repo:
        found = cached_hub_file(hub_repo, filename)
        if found is not None:
            return found
    where = f" (hub repo {hub_repo}: `hf download {hub_repo} {filename}`)" if hub_repo else ""
    raise MissingWeightError(f"missing weight {filename}{where}; download it and pass its path with {how}")


def cached_hub_file(repo_id: str, filename: str) -> Path | None:
    """Look ``repo_id/filename`` up in the local HF cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency of diffusers
        return None
    try:
        hit = try_to_load_from_cache(repo_id=repo_id, filename=filename)
    except Exception:  # malformed repo id etc.
        return None
    if isinstance(hit, str) and os.path.isfile(hit):
        return Path(hit)
    return None


def resolve_pretrained_dir(spec: str, subfolder_hint: str, how: str) -> str:
    """Resolve a diffusers-style model spec: a local folder, or a hub id present in the local cache.

    Returns a local folder path or the hub id (which ``from_pretrained`` then finds in the cache).
    """
    p = Path(spec).expanduser()
    if p.exists():
        if not p.is_dir():
            raise MissingWeightError(f"{spec} is a file, expected a diffusers-layout folder; pass the folder with {how}")
        return str(p)
    if "/" in spec and not spec.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download

            return snapshot_download(spec, local_files_only=True)
        except Exception:
            raise MissingWeightError(
                f"model {spec} is not in the local Hugging Face cache; run `hf download {spec}` "
                f"on a machine with network access, or pass a local folder with {how}"
            ) from None
    raise MissingWeightError(f"model folder {spec} not found ({subfolder_hint}); pass an existing folder or hub id with {how}")
