"""Why a model, tokenizer, processor or dataset cannot be had, in one line that says what to do.

Two jobs, one message scheme (``cannot load the <part> of <what> '<id>' (revision '<r>'): <why>;
<remedy>``):

* :func:`require_hub` fails fast when a hub id is used on a machine that cannot reach the hub.
  Without it, ``datasets``/``huggingface_hub`` retry with back-off for half a minute and then raise
  an error that does not say what to change.
* :func:`unavailable` is the one place that reads the libraries' errors (``huggingface_hub.errors``,
  the ``OSError``/``ValueError`` transformers wraps them in, ``datasets``' own) and the local
  folder a path names, and turns every way the thing can be missing into an
  :class:`~caslie.errors.UnavailableError`: offline and not cached, hub unreachable, gated repo, no
  such repo, revision or file, a folder without weights, tokenizer files or ``config.json``.
  Every loader (:mod:`caslie.pretrained`, the dataset source) goes through it.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from caslie.errors import HubUnavailableError, UnavailableError

OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
"""The switches that put the Hugging Face libraries in offline mode."""

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model", "tekken.json")  # fmt: skip
"""Files one of which a tokenizer is built from (``tokenizer_config.json`` alone is not enough)."""
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")

PART_NEEDS = {
    "config": ("config",),
    "weights": ("config", "weights"),
    "tokenizer": ("tokenizer",),
    "processor": ("processor", "tokenizer"),
}
"""What loading each part needs, in the order it is checked."""

NEED_FILES = {
    "config": ("config.json",),
    "tokenizer": TOKENIZER_FILES,
    "processor": PROCESSOR_FILES,
}
NEED_NAMES = {
    "config": "config.json",
    "weights": "weight file (*.safetensors, *.bin)",
    "tokenizer": "tokenizer file (tokenizer.json, tokenizer.model, vocab.json...)",
    "processor": "processor config (preprocessor_config.json or processor_config.json)",
}

NETWORK_ERRORS = {
    "ConnectionError",
    "TimeoutError",
    "NetworkError",
    "TimeoutException",
    "ProxyError",
}
"""Class names of the errors of a request that never got an answer (builtins, httpx, requests)."""

_NO_FILE = re.compile(r"does not appear to have (?:a file named|files named) (.+?)\. Checkout")


def offline_switch() -> str | None:
    """The offline variable that is set (``HF_HUB_OFFLINE=1``...), else ``None``."""
    for var in OFFLINE_VARS:
        value = os.environ.get(var, "").strip()
        if value.lower() in ("1", "true", "yes", "on"):
            return f"{var}={value}"
    return None


def hub_offline() -> bool:
    """Whether the user switched the Hugging Face libraries to offline mode."""
    return offline_switch() is not None


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


@dataclass(frozen=True)
class Wanted:
    """What a loader was asked for, as the messages name it.

    Attributes:
        name: The hub id or the local folder.
        what: The setting or role that named it (``model.name_or_path``, ``voter 'x'``, ``dataset``).
        part: What was being loaded (``tokenizer``, ``weights``, ``config``, ``processor``), or
            ``""`` for a dataset.
        revision: The hub revision asked for, if any.
        alternative: What else the user can set (a config key and value).
        repo_type: ``model`` or ``dataset``.
        folder: The local folder it was loaded from (a path or a ``tiny:`` model), else ``None``.
    """

    name: str
    what: str
    part: str = ""
    revision: str | None = None
    alternative: str = "set it to a local folder (or a tiny:<name> model)"
    repo_type: str = "model"
    folder: Path | None = None

    def subject(self) -> str:
        """``cannot load the tokenizer of model.name_or_path 'org/name' (revision 'v2')``."""
        rev = f" (revision '{self.revision}')" if self.revision else ""
        of = f"the {self.part} of {self.what}" if self.part else self.what
        return f"cannot load {of} '{self.name}'{rev}"

    def download(self) -> str:
        """The command that puts it in the local cache."""
        kind = " --repo-type dataset" if self.repo_type == "dataset" else ""
        rev = f" --revision {self.revision}" if self.revision else ""
        return f"`hf download {self.name}{kind}{rev}`"

    def page(self) -> str:
        """Its page on the hub."""
        prefix = "datasets/" if self.repo_type == "dataset" else ""
        return f"https://huggingface.co/{prefix}{self.name}"


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an error's message (its type when it has none)."""
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__


def require_hub(wanted: Wanted) -> None:
    """Raise :class:`HubUnavailableError` unless ``wanted`` can be fetched from the hub.

    In offline mode the caller goes on and lets the library read its local cache (what is not there
    is then reported by :func:`unavailable`).
    """
    if hub_offline():
        return
    reason = hub_reachable()
    if reason is not None:
        raise HubUnavailableError(_unreachable(wanted, reason))


def _unreachable(wanted: Wanted, reason: str) -> str:
    rev = f" (revision '{wanted.revision}')" if wanted.revision else ""
    return (
        f"cannot reach the Hugging Face Hub to fetch {wanted.what} '{wanted.name}'{rev} ({reason}). "
        f"On a machine with hub access this id works as is; offline, either download it first "
        f"({wanted.download()}) and set HF_HUB_OFFLINE=1 to use the local cache, or "
        f"{wanted.alternative}."
    )


def _chain(err: BaseException) -> list[BaseException]:
    """The error and every error it was raised from or while handling, outermost first."""
    seen: list[BaseException] = []
    todo = [err]
    while todo:
        e = todo.pop(0)
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__]
    return seen


def _names(err: BaseException) -> set[str]:
    # Class names, so datasets (slow to import) is not imported to recognise its errors.
    return {cls.__name__ for cls in type(err).__mro__}


def _hub_reason(chain: list[BaseException], wanted: Wanted) -> str | None:
    """Why, from ``huggingface_hub``'s and ``datasets``' own error types (or messages, where
    datasets re-raises its error without its cause)."""
    from huggingface_hub import errors as hf

    def has(cls: type) -> BaseException | None:
        return next((e for e in chain if isinstance(e, cls)), None)

    login = "log in with `hf auth login` (or set HF_TOKEN)"
    ds_message = " ".join(str(e) for e in chain if "DatasetNotFoundError" in _names(e))
    if has(hf.GatedRepoError) or "is a gated dataset" in ds_message:
        return (f"it is a gated repo: accept its terms on {wanted.page()} and {login} with that "
                f"account, or {wanted.alternative}")  # fmt: skip
    if has(hf.RevisionNotFoundError) or (
        "Revision '" in ds_message and "doesn't exist" in ds_message
    ):
        if not wanted.revision:  # only the default branch was asked for
            return f"the repo has no main branch: check the id, or {wanted.alternative}"
        return (f"the hub has no revision '{wanted.revision}' of it: set model.revision to a "
                f"branch, tag or commit listed on {wanted.page()}")  # fmt: skip
    if has(hf.RepositoryNotFoundError) or ds_message:
        return (f"no such {wanted.repo_type} on the Hugging Face Hub, or it is private: check the "
                f"id, {login} if it is private, or {wanted.alternative}")  # fmt: skip
    remote = has(hf.RemoteEntryNotFoundError)
    if remote is not None:
        url = getattr(getattr(remote, "response", None), "url", None)
        file = str(url).rsplit("/", 1)[-1] if url else "a file it needs"
        return (f"the repo has no {file}: check that the id names a complete {wanted.repo_type}, "
                f"or {wanted.alternative}")  # fmt: skip
    return None


def _not_cached(chain: list[BaseException]) -> bool:
    from huggingface_hub import errors as hf

    return any(
        isinstance(e, (hf.LocalEntryNotFoundError, hf.OfflineModeIsEnabled))
        or (isinstance(e, ConnectionError) and "Couldn't reach" in str(e))  # datasets' wording
        or "is not cached" in str(e)
        for e in chain
    )


def _offline_reason(wanted: Wanted) -> str:
    from huggingface_hub import constants

    switch = offline_switch() or "offline mode"
    if wanted.repo_type == "dataset":
        where, fetch = "the local datasets cache", "load it once where the hub is reachable"
    else:
        where = f"the local hub cache ({constants.HF_HUB_CACHE})"
        fetch = f"download it into that cache where the hub is reachable ({wanted.download()})"
    return (
        f"it is not in {where} and {switch} forbids downloading it: {fetch}, with the same "
        f"HF_HOME, or unset {switch.split('=')[0]}, or {wanted.alternative}"
    )


def _has(names: set[str], need: str) -> bool:
    if need == "weights":
        return any(Path(n).suffix in WEIGHT_SUFFIXES for n in names)
    return bool(names & set(NEED_FILES[need]))


def gap(present: set[str], part: str, absent: set[str] | None = None) -> str | None:
    """What loading ``part`` needs that is missing, e.g. ``no config.json``, else ``None``.

    Args:
        present: The file names there are.
        part: ``config``, ``weights``, ``tokenizer`` or ``processor``.
        absent: File names known not to exist (the hub cache's record of files the hub answered
            "no such file" for); a need counts as missing only when one of its files is in it.
            ``None`` for a local folder, where not present is absent.
    """
    for need in PART_NEEDS.get(part, ()):
        if not _has(present, need) and (absent is None or _has(absent, need)):
            return f"no {NEED_NAMES[need]}"
    return None


def _names_in(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.is_file()} if folder.is_dir() else set()


def cache_gap(wanted: Wanted) -> str | None:
    """What the hub said ``wanted`` lacks, from the local hub cache (``.no_exist`` records the
    files the hub answered "no such file" for), else ``None``."""
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / f"{wanted.repo_type}s--{wanted.name.replace('/', '--')}"
    revision = wanted.revision or "main"
    try:
        commit = (repo / "refs" / revision).read_text(encoding="utf-8").strip()
    except OSError:
        commit = revision  # a commit hash has no ref
    absent = _names_in(repo / ".no_exist" / commit)
    return gap(_names_in(repo / "snapshots" / commit), wanted.part, absent) if absent else None


def unavailable(err: BaseException, wanted: Wanted) -> UnavailableError | None:
    """The one-line error for a load that failed because the thing is missing, else ``None``.

    Args:
        err: What the library raised (with its chain of causes).
        wanted: What was being loaded.

    Returns:
        An :class:`UnavailableError` (a :class:`HubUnavailableError` when the hub cannot be
        reached), or ``None`` when ``err`` is about something else (a broken file, a wrong model
        type): the caller reports that its own way.
    """
    if wanted.folder is not None:
        lack = gap(_names_in(wanted.folder), wanted.part)
        if lack is None:
            return None
        return UnavailableError(
            f"{wanted.subject()}: the folder has {lack}; save the complete model there "
            f"(save_pretrained of the model and its tokenizer), or point {wanted.what} at the "
            f"folder that has it"
        )
    chain = _chain(err)
    reason = _hub_reason(chain, wanted)
    if reason is None and wanted.repo_type == "model" and (lack := cache_gap(wanted)):
        reason = f"the repo has {lack}: check that the id names a complete model, or {wanted.alternative}"
    if reason is None and _not_cached(chain):
        if not hub_offline():
            return HubUnavailableError(_unreachable(wanted, first_line(err, 120)))
        reason = _offline_reason(wanted)
    if reason is None:
        missing = next((m for e in chain if (m := _NO_FILE.search(str(e)))), None)
        if missing is not None:
            reason = (f"the repo has no {missing.group(1)}: check that the id names a complete "
                      f"model, or {wanted.alternative}")  # fmt: skip
    if reason is None and any(_names(e) & NETWORK_ERRORS for e in chain):
        return HubUnavailableError(_unreachable(wanted, first_line(err, 120)))
    return UnavailableError(f"{wanted.subject()}: {reason}") if reason else None
