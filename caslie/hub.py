"""Fail fast, with a clear message, when a hub id is used on a machine that cannot reach the hub.

Without this, ``datasets``/``huggingface_hub`` retry with back-off for half a minute and then raise an
error that does not say what to change.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from caslie.errors import HubUnavailableError


def hub_offline() -> bool:
    """Whether the user switched the Hugging Face libraries to offline mode."""
    return any(
        os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hub_reachable(timeout: float = 3.0) -> str | None:
    """Try a TCP connection to the hub endpoint.

    Returns:
        ``None`` when reachable, else the reason it is not.
    """
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as err:
        return f"{host}:{port}: {err.strerror or err}"


def require_hub(repo_id: str, what: str, alternative: str) -> None:
    """Raise :class:`HubUnavailableError` unless ``repo_id`` can be fetched from the hub.

    In offline mode the caller goes on and lets the library read its local cache.

    Args:
        repo_id: The hub id that was asked for.
        what: ``dataset`` or ``model``, for the message.
        alternative: What the user can set instead (a config key and value).
    """
    if hub_offline():
        return
    reason = hub_reachable()
    if reason is not None:
        raise HubUnavailableError(
            f"cannot reach the Hugging Face Hub to fetch {what} '{repo_id}' ({reason}). "
            f"On a machine with hub access this id works as is; offline, either download it first "
            f"and set HF_HUB_OFFLINE=1 to use the local cache, or {alternative}."
        )
