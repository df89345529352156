"""Keep secrets that reach a config through environment variables out of every file written.

A config may read a token with ``${oc.env:HF_TOKEN}``. The run uses the resolved value, but what is
saved (``config.yaml``, the W&B run config) keeps the interpolation as written. As a second guard,
any saved string that contains the value of a secret-looking environment variable (``*_TOKEN``,
``*_KEY``, ``*SECRET*``, ``*PASSWORD*``...) has that value replaced by its ``${oc.env:NAME}``
interpolation, so a token pasted through another interpolation or an override is not written either.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

SECRET_ENV_NAME = re.compile(r"TOKEN|SECRET|PASSW|API_?KEY|_KEY$|CREDENTIAL|AUTH", re.IGNORECASE)
"""Environment variable names whose values are treated as secrets."""
MIN_SECRET_LENGTH = 6
"""Shorter values are not replaced: they would match ordinary text."""


def env_interpolations(node: DictConfig | ListConfig, prefix: str = "") -> dict[str, str]:
    """Dotted key -> the text as written, for every value that reads an environment variable."""
    found: dict[str, str] = {}
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        path = f"{prefix}{key}"
        if OmegaConf.is_interpolation(node, key):
            raw = str(node._get_node(key)._value())  # the text before resolution
            if "oc.env:" in raw:
                found[path] = raw
            continue
        child = node._get_node(key)
        if isinstance(child, (DictConfig, ListConfig)) and not child._is_none():
            found |= env_interpolations(child, path + ".")
    return found


def _set_path(container: Any, path: str, value: str) -> None:
    *parents, last = path.split(".")
    for part in parents:
        container = container[int(part)] if isinstance(container, list) else container.get(part)
        if container is None:
            return
    if isinstance(container, list):
        if int(last) < len(container):
            container[int(last)] = value
    elif last in container:
        container[last] = value


def _secret_values(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    pairs = [(v, k) for k, v in environ.items()
             if SECRET_ENV_NAME.search(k) and len(v) >= MIN_SECRET_LENGTH]  # fmt: skip
    return sorted(pairs, key=lambda p: -len(p[0]))  # longest first: one value may contain another


def _scrub(value: Any, secrets: list[tuple[str, str]]) -> Any:
    if isinstance(value, dict):
        return {k: _scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, secrets) for v in value]
    if isinstance(value, str):
        for secret, name in secrets:
            value = value.replace(secret, "${oc.env:" + name + "}")
    return value


def keep_secrets_out(container: dict[str, Any], written: Mapping[str, str],
                     environ: Mapping[str, str] = os.environ) -> dict[str, Any]:  # fmt: skip
    """A copy of a resolved config fit to be written.

    Args:
        container: The resolved config as plain containers.
        written: :func:`env_interpolations` of the config as loaded.
        environ: The environment whose secret-looking values are replaced.
    """
    for path, raw in written.items():
        _set_path(container, path, raw)
    return _scrub(container, _secret_values(environ))
