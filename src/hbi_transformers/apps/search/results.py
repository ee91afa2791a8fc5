"""What indexing and searching return: `IndexReport` and `SearchHit`, and hits as JSON or as a
text table."""

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

from ...data import BadItem


@dataclass
class IndexReport:
    """What `build_index` did.

    `added` / `updated` / `removed` are the relative paths of files encoded for the first time,
    re-encoded because they changed, and dropped because they were deleted; `unchanged` counts
    the files kept without decoding; `bad_files` are the files that cannot be decoded (with the
    reason), skipped: the ones tried in this run and the unchanged ones that failed before.
    """

    index_dir: str
    num_entries: int
    num_files: int
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    bad_files: list[BadItem] = field(default_factory=list)

    @property
    def num_bad(self) -> int:
        return len(self.bad_files)

    def summary(self) -> str:
        counts = (
            f"{len(self.added)} added, {len(self.updated)} updated, {len(self.removed)} removed, "
            f"{self.unchanged} unchanged, {self.num_bad} bad"
        )
        lines = [f"{self.index_dir}: {self.num_entries} entries from {self.num_files} files ({counts})"]
        lines += [f"  bad: {item.name} ({item.reason})" for item in self.bad_files]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "num_bad": self.num_bad}


@dataclass
class SearchHit:
    """One ranked entry for one query.

    `score` is the fused HBI logit (level-weighted similarity times `exp(logit_scale)`), and
    `level_scores` its entity / action / event parts. `file` is the path relative to the indexed
    folder and `path` where it was at indexing time. `segment_start` / `segment_end` bound the
    indexed window of a segmented video (None for a whole file). `window_start` / `window_end`
    is the best-matching moment around `best_frame_time` (see `best_matching_frames`); None for
    entries indexed without timestamps.
    """

    rank: int
    score: float
    file: str
    path: str
    segment_start: float | None
    segment_end: float | None
    window_start: float | None
    window_end: float | None
    best_frame_time: float | None
    level_scores: dict[str, float]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def search_results_to_json(queries: Sequence[str], results: Sequence[Sequence[SearchHit]]) -> list[dict]:
    """The JSON-able form of `search`'s results: `[{"query": ..., "hits": [hit dicts]}]`."""
    return [{"query": query, "hits": [hit.to_dict() for hit in hits]} for query, hits in zip(queries, results)]


def format_search_results(queries: Sequence[str], results: Sequence[Sequence[SearchHit]]) -> str:
    """A text table per query: rank, score, file (with its segment), best-matching window."""
    blocks = []
    for query, hits in zip(queries, results):
        rows = [["rank", "score", "file", "window"]]
        for hit in hits:
            file = hit.file
            if hit.segment_start is not None:
                file += f" [{_seconds(hit.segment_start)}-{_seconds(hit.segment_end)}]"
            window = "-" if hit.window_start is None else f"{_seconds(hit.window_start)}-{_seconds(hit.window_end)}"
            rows.append([str(hit.rank), f"{hit.score:.2f}", file, window])
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(
                cell.rjust(width) if column < 2 else cell.ljust(width)
                for column, (cell, width) in enumerate(zip(row, widths))
            ).rstrip()
            for row in rows
        ]
        blocks.append(f"query: {query}\n" + "\n".join(lines))
    return "\n\n".join(blocks)


def _seconds(value: float) -> str:
    """m:ss.s for a position in a video."""
    minutes, seconds = divmod(value, 60)
    return f"{int(minutes)}:{seconds:04.1f}"
