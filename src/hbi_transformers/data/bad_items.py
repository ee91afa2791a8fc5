"""Bad-video accounting: which clips were tried, which failed to decode and why, and the limit on
their share. Each clip counts once per run however often it is tried (every epoch, in every
DataLoader worker, on every process): a counter merges the `VideoReport` each batch carries."""

from dataclasses import dataclass, field

from transformers.utils import logging

logger = logging.get_logger(__name__)


class TooManyBadVideosError(RuntimeError):
    """The share of videos that failed to decode passed the collator's `max_bad_fraction`."""


@dataclass
class BadItem:
    name: str
    reason: str


@dataclass
class VideoReport:
    """What one batch tried: the ids of its clips (see `stable_video_index`) and, for the clips
    that failed, `(id, name, reason)`."""

    tried: list[int] = field(default_factory=list)
    failed: list[tuple[int, str, str]] = field(default_factory=list)


class BadItemCounter:
    """How many distinct clips were tried and which failed, with the limit on the failed share.

    The limit is only checked once `min_items` clips were tried, so that a bad file early in a
    long run does not stop it: 1 failure in the first 3 videos is not a corpus problem.
    """

    def __init__(self, max_bad_fraction: float = 0.05, min_items: int = 50):
        if not 0 <= max_bad_fraction <= 1:
            raise ValueError(f"max_bad_fraction must be within [0, 1], got {max_bad_fraction}")
        self.max_bad_fraction = max_bad_fraction
        self.min_items = min_items
        self._tried: set[int] = set()
        self._bad: dict[int, BadItem] = {}

    @property
    def seen_items(self) -> int:
        return len(self._tried)

    @property
    def bad_items(self) -> list[BadItem]:
        return list(self._bad.values())

    def record_success(self, clip_id: int) -> None:
        self._tried.add(clip_id)

    def record_failure(self, clip_id: int, name: str, reason: str) -> None:
        self._tried.add(clip_id)
        if clip_id not in self._bad:
            self._bad[clip_id] = BadItem(name, reason)
            logger.warning(f"skipping video {name}: {reason} ({len(self._bad)} of {self.seen_items} skipped so far)")

    def merge(self, report: VideoReport) -> None:
        """Counts what a batch collated elsewhere (a DataLoader worker, another process) tried."""
        self._tried.update(report.tried)
        for clip_id, name, reason in report.failed:
            self.record_failure(clip_id, name, reason)

    def state_dict(self) -> dict:
        """What a checkpoint keeps, so that a resumed run counts on from where it stopped."""
        return {"tried": sorted(self._tried), "bad": [[clip_id, item.name, item.reason] for clip_id, item in self._bad.items()]}

    def load_state_dict(self, state: dict) -> None:
        self._tried = set(state["tried"])
        self._bad = {clip_id: BadItem(name, reason) for clip_id, name, reason in state["bad"]}

    @property
    def bad_fraction(self) -> float:
        return len(self._bad) / self.seen_items if self.seen_items else 0.0

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
        return skipped_summary("videos", self.seen_items, [(item.name, item.reason) for item in self.bad_items],
                               max_listed)


def skipped_summary(what: str, total: int, skipped: list[tuple[str, str]], max_listed: int = 10) -> str:
    """"3 of 1200 <what> skipped: <name> (<reason>), ... and 1 more", from `(name, reason)` pairs."""
    summary = f"{len(skipped)} of {total} {what} skipped"
    if not skipped:
        return summary
    listed = ", ".join(f"{name} ({reason})" for name, reason in skipped[:max_listed])
    more = len(skipped) - max_listed
    return f"{summary}: {listed}" + (f" and {more} more" if more > 0 else "")
