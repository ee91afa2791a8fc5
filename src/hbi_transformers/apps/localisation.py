"""Do the interaction maps point at the right moments? Event localisation on the synthetic corpus.

Each clip of the synthetic corpus records when each of its events happens (`start_frame` to
`end_frame`), and each caption describes every event in one clause ("a red square moves left").
For every caption and event, the clause's tokens are found in the caption, their rows of the
entity-level word x frame map are averaged, and the frame with the highest value is a hit when its
time falls inside the event's window. Chance is the share of the sampled frames that fall inside
the window (a frame picked at random). The same is counted on the similarity map the estimators
read, to tell what the interaction adds to the plain similarity.

The entity level compares words with single frames, and the shapes of the corpus are on screen
before and after most of their events: a frame that shows the red square matches "a red square
moves left" whether or not it moves. So the clause is also grounded: a hit when its best frame
shows the clause's shape in the clause's colour, counted over the events whose shape is shown in
some sampled frames but not all (it appears, leaves or changes colour), where a frame at random
would not do as well.
"""

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data.synthetic.vocabulary import ACTION_PHRASES, SHAPE_WORDS
from ..models.hbi.modeling_hbi import HBIModel
from ..models.hbi.processing_hbi import HBIProcessor
from .visualization import interaction_maps


@dataclass
class LocalisationReport:
    """Counts over (caption, event) pairs.

    Attributes:
        source: where the interaction values came from (see `interaction_maps`).
        events: (caption, event) pairs measured.
        skipped: pairs left out because another event of the clip is described by the same words
            (its clause cannot be told apart) or its clause was cut by the processor's word limit.
        interaction_hits: pairs whose highest-interaction frame lies inside the event's window
            (ties share the hit: see `_hit`).
        similarity_hits: the same for the highest-similarity frame.
        chance: the expected hit rate of a frame drawn uniformly among the sampled frames.
        grounding_events: pairs whose shape is shown (in the clause's colour) in some sampled
            frames but not all.
        grounding_interaction_hits, grounding_similarity_hits: those whose best frame shows it.
        grounding_chance: the expected hit rate of a random frame over those pairs.
    """

    source: str
    events: int
    skipped: int
    interaction_hits: float
    similarity_hits: float
    chance: float
    grounding_events: int = 0
    grounding_interaction_hits: float = 0.0
    grounding_similarity_hits: float = 0.0
    grounding_chance: float = 0.0

    @property
    def interaction_rate(self) -> float:
        return self.interaction_hits / max(self.events, 1)

    @property
    def similarity_rate(self) -> float:
        return self.similarity_hits / max(self.events, 1)

    @property
    def grounding_interaction_rate(self) -> float:
        return self.grounding_interaction_hits / max(self.grounding_events, 1)

    @property
    def grounding_similarity_rate(self) -> float:
        return self.grounding_similarity_hits / max(self.grounding_events, 1)

    def as_dict(self) -> dict:
        return {**asdict(self), "interaction_rate": self.interaction_rate, "similarity_rate": self.similarity_rate,
                "grounding_interaction_rate": self.grounding_interaction_rate,
                "grounding_similarity_rate": self.grounding_similarity_rate}

    def sentence(self) -> str:
        return (
            f"event localisation over {self.events} caption events ({self.skipped} skipped): the "
            f"highest-interaction frame falls inside the event {100 * self.interaction_rate:.1f}% of the time, "
            f"the highest-similarity frame {100 * self.similarity_rate:.1f}%, chance {100 * self.chance:.1f}%; "
            f"grounding over the {self.grounding_events} whose shape is shown in some frames only: the "
            f"highest-interaction frame shows it {100 * self.grounding_interaction_rate:.1f}% of the time, the "
            f"highest-similarity frame {100 * self.grounding_similarity_rate:.1f}%, chance "
            f"{100 * self.grounding_chance:.1f}%"
        )


def clause_pattern(event: dict) -> re.Pattern:
    """The clause `describe_events` writes for `event`: article, colour, a word for the shape and a
    phrase for the action, as whole words."""
    shapes = "|".join(map(re.escape, SHAPE_WORDS[event["shape"]]))
    actions = "|".join(
        re.escape(phrase.format(new_colour=event.get("new_colour"))) for phrase in ACTION_PHRASES[event["action"]]
    )
    return re.compile(rf"\b(?:a|an|the) {re.escape(event['colour'])} (?:{shapes}) (?:{actions})\b")


def clause_spans(caption: str, events: list[dict]) -> list[tuple[int, int] | None]:
    """Character span of each event's clause in `caption`; None where the clause is missing or
    matches another event's pattern too (same shape, colour and action twice)."""
    patterns = [clause_pattern(event) for event in events]
    spans = []
    for index, pattern in enumerate(patterns):
        matches = list(pattern.finditer(caption))
        duplicated = any(other.pattern == pattern.pattern for other_index, other in enumerate(patterns) if other_index != index)
        spans.append(matches[0].span() if len(matches) == 1 and not duplicated else None)
    return spans


def token_positions(tokenizer, caption: str, span: tuple[int, int], max_length: int) -> list[int]:
    """Positions (in the processor's token sequence, start token included) of the tokens that
    overlap the character `span`."""
    encoding = tokenizer(caption, return_offsets_mapping=True, truncation=True, max_length=max_length)
    start, end = span
    return [
        position
        for position, (token_start, token_end) in enumerate(encoding["offset_mapping"])
        if token_end > token_start and token_start < end and token_end > start
    ]


def _window_frames(timestamps: list[float], event: dict, fps: float) -> torch.Tensor:
    """Which sampled frames (by their time) show the event happening."""
    frame_numbers = torch.tensor(timestamps) * fps
    return (frame_numbers >= event["start_frame"] - 1e-6) & (frame_numbers <= event["end_frame"] + 1e-6)


def shown_frames(timestamps: list[float], row: dict, event: dict) -> torch.Tensor:
    """Which sampled frames show the event's shape in the event's colour: from the start of its
    "appear" (if it has one) to the end of its "leave" (if any), in its first colour up to the end
    of each colour change and in the new one from the start of it (both while it changes)."""
    frame_numbers = torch.tensor(timestamps) * row["fps"]
    actor_events = [other for other in row["events"] if other["actor"] == event["actor"]]
    shown = torch.ones_like(frame_numbers, dtype=torch.bool)
    colour = torch.full_like(shown, row["shapes"][event["actor"]]["colour"] == event["colour"])
    for other in actor_events:
        before = frame_numbers < other["start_frame"] - 1e-6
        after = frame_numbers > other["end_frame"] + 1e-6
        if other["action"] == "appear":
            shown &= ~before
        elif other["action"] == "leave":
            shown &= ~after
        elif other["action"] == "change_colour":
            was, becomes = other["colour"] == event["colour"], other["new_colour"] == event["colour"]
            colour = torch.where(before, colour, torch.where(after, torch.tensor(becomes), torch.tensor(was or becomes)))
    return shown & colour


def _hit(scores: torch.Tensor, inside: torch.Tensor) -> float:
    """1 when the best frame is inside the window; when several frames tie for best (a flat map),
    the share of them inside, so that a flat map scores chance and not whatever frame comes first."""
    best = scores == scores.max()
    return float(inside[best].float().mean())


@torch.no_grad()
def event_localisation(
    model: HBIModel,
    processor: HBIProcessor,
    annotation_file: str | Path,
    video_root: str | Path | None = None,
    source: str = "estimator",
    max_clips: int | None = None,
    progress: bool = True,
) -> LocalisationReport:
    """Counts, over every caption and event of a synthetic-corpus annotation file (rows with
    `events` and `fps`, as `make_synthetic_corpus` writes them), how often the entity-level map's
    highest frame for the event's clause lies inside the event's window."""
    annotation_file = Path(annotation_file)
    video_root = Path(video_root) if video_root is not None else annotation_file.parent
    rows = [json.loads(line) for line in annotation_file.read_text().splitlines() if line.strip()]
    if max_clips is not None:
        rows = rows[:max_clips]
    if rows and "events" not in rows[0]:
        raise ValueError(f"{annotation_file}:1 has no `events`: event localisation needs a synthetic-corpus annotation file")
    was_training = model.training
    model.eval()
    events = skipped = grounding_events = 0
    interaction_hits = similarity_hits = chance_total = 0.0
    grounding_interaction = grounding_similarity = grounding_chance = 0.0
    try:
        for row in tqdm(rows, desc="event localisation", unit="clip", disable=not progress):
            for caption in row["captions"]:
                maps = interaction_maps(model, processor, video_root / row["video"], caption, source=source)
                entity = maps.levels[0]
                for event, span in zip(row["events"], clause_spans(caption.lower(), row["events"])):
                    positions = [] if span is None else token_positions(
                        processor.tokenizer, caption.lower(), span, processor.max_words
                    )
                    positions = [position for position in positions if position < entity.interaction.shape[0]]
                    if not positions:
                        skipped += 1
                        continue
                    inside = _window_frames(maps.timestamps, event, row["fps"])
                    events += 1
                    chance_total += float(inside.float().mean())
                    interaction = entity.interaction[positions].mean(0)
                    similarity = entity.similarity[positions].mean(0)
                    interaction_hits += _hit(interaction, inside)
                    similarity_hits += _hit(similarity, inside)
                    shown = shown_frames(maps.timestamps, row, event)
                    if 0 < int(shown.sum()) < len(shown):
                        grounding_events += 1
                        grounding_chance += float(shown.float().mean())
                        grounding_interaction += _hit(interaction, shown)
                        grounding_similarity += _hit(similarity, shown)
    finally:
        model.train(was_training)
    return LocalisationReport(source, events, skipped, interaction_hits, similarity_hits, chance_total / max(events, 1),
                              grounding_events, grounding_interaction, grounding_similarity,
                              grounding_chance / max(grounding_events, 1))
