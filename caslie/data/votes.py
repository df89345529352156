"""The vote decision: read the per-voter CQE votes of a caption and decide whether it is kept.

Votes are produced by ``caslie vote`` into a vote cache (one folder per voter) and read here, by
fusion and by the vote summary alike, so the two always decide the same way.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from caslie.config import DataConfig
from caslie.data.advice import fill_command
from caslie.data.cache import VoteCache
from caslie.errors import CoverageError

VoteKey = tuple[str, int, str]
"""(row id, image index, caption hash): what a vote is about."""


def decide(votes: dict[str, str], voters: Sequence[str], tie: str = "no",
           rule: str = "majority") -> bool:  # fmt: skip
    """Whether ``voters`` keep a caption, given each one's answer (``yes``, ``no``, or another
    answer a generating voter gave).

    ``majority``: more yes than other answers; a tie goes to ``tie``. ``plurality`` (the reference):
    the most common answer in voter order, a tie going to the answer met first, keeps the caption
    when it is ``yes``.
    """
    if rule == "plurality":
        return Counter(votes[v] for v in voters).most_common(1)[0][0] == "yes"
    yes = sum(votes[v] == "yes" for v in voters)
    no = len(voters) - yes
    return yes > no or (yes == no and tie == "yes")


class VoteTables:
    """The merged votes of several voters, looked up per caption.

    Args:
        cache: The vote cache.
        voters: The voters to read.
    """

    def __init__(self, cache: VoteCache, voters: Sequence[str]):
        self.voters = list(voters)
        self._tables = {v: cache.load(v) for v in self.voters}

    def votes(self, key: VoteKey) -> dict[str, str]:
        """Each voter's ``yes``/``no`` on one caption (voters without a vote are left out)."""
        return {v: t[key]["vote"] for v, t in self._tables.items() if key in t}

    def missing(self, key: VoteKey) -> list[str]:
        """Voters that have not judged this caption."""
        return [v for v, t in self._tables.items() if key not in t]


def open_votes(cfg: DataConfig, voters: Sequence[str]) -> VoteTables:
    """The vote tables ``data.fusion`` reads from ``data.votes``.

    Raises:
        CoverageError: no ``data.votes`` set, or the folder does not exist; the message names the
            command that fills it.
    """
    if not cfg.votes:
        raise CoverageError(
            f"data.fusion={cfg.fusion} needs votes: set data.votes to a vote cache folder "
            f"(filled by `caslie vote`), or use data.fusion=uia or none"
        )
    cache = VoteCache(Path(cfg.votes), cfg.on_error)
    if not cache.folder.is_dir():
        raise CoverageError(
            f"vote cache {cfg.votes} does not exist. Produce it with: {fill_command(cfg, 'vote')}"
        )
    return VoteTables(cache, voters)
