"""Bad-video accounting: which videos failed to decode and why, and the limit on their share."""

from dataclasses import dataclass

from transformers.utils import logging

logger = logging.get_logger(__name__)


class TooManyBadVideosError(RuntimeError):
    """The share of videos that failed to decode passed the collator's `max_bad_fraction`."""


@dataclass
class BadItem:
    name: str
    reason: str


class BadItemCounter:
    """How many videos were tried and which failed, with the limit on the failed share.

    The limit is only checked once `min_items` videos were tried, so that a bad file early in a
    long run does not stop it: 1 failure in the first 3 videos is not a corpus problem.
    """

    def __init__(self, max_bad_fraction: float = 0.05, min_items: int = 50):
        if not 0 <= max_bad_fraction <= 1:
            raise ValueError(f"max_bad_fraction must be within [0, 1], got {max_bad_fraction}")
        self.max_bad_fraction = max_bad_fraction
        self.min_items = min_items
        self.seen_items = 0
        self.bad_items: list[BadItem] = []

    def record_success(self) -> None:
        self.seen_items += 1

    def record_failure(self, name: str, reason: str) -> None:
        self.seen_items += 1
        self.bad_items.append(BadItem(name, reason))
        logger.warning(f"skipping video {name}: {reason} ({len(self.bad_items)} of {self.seen_items} skipped so far)")

    @property
    def bad_fraction(self) -> float:
        return len(self.bad_items) / self.seen_items if self.seen_items else 0.0

    def check(self) -> None:
        """Raise `TooManyBadVideosError` when the failed share is over the limit."""
        if self.seen_items >= self.min_items and self.bad_fraction > self.max_bad_fraction:
            raise TooManyBadVideosError(
                f"{self.report()}; that is {self.bad_fraction:.1%} of the videos, over max_bad_fraction="
                f"{self.max_bad_fraction:.1%}: fix or remove them from the corpus, or raise max_bad_fraction"
            )

    def report(self, max_listed: int = 10) -> str:
        """One line for the end of training or evaluation, e.g.
        "3 of 1200 videos skipped: a.mp4 (no such file), ..."."""
        summary = f"{len(self.bad_items)} of {self.seen_items} videos skipped"
        if not self.bad_items:
            return summary
        listed = ", ".join(f"{item.name} ({item.reason})" for item in self.bad_items[:max_listed])
        more = len(self.bad_items) - max_listed
        return f"{summary}: {listed}" + (f" and {more} more" if more > 0 else "")
