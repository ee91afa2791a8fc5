"""Word x frame Banzhaf interaction pictures: for one video and one caption, how much each word (or
word cluster) and each frame (or frame cluster) contribute to the match together, at each level of
the hierarchy (entity, action, event).

`interaction_maps` computes the maps and their labels; `plot_interaction_maps` draws them as one
PNG, with the sampled frames as thumbnails along the entity level's frame axis. `main` is the
command line of `scripts/visualize_interaction.py`. Plotting needs matplotlib.
"""

import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..training.banzhaf_labels import monte_carlo_banzhaf_interaction
from ..models.hbi.configuration_hbi import LEVEL_NAMES
from ..models.hbi.wti import LevelTokens, matched_word_frame_similarity
from ..models.hbi.modeling_hbi import HBIModel
from ..models.hbi.processing_hbi import HBIProcessor
from ..models.hbi.video_io import VideoSource, read_video

SOURCES = ("estimator", "teacher", "monte_carlo")
SOURCE_DESCRIPTIONS = {
    "estimator": "each level's student estimator",
    "teacher": "the teacher estimator",
    "monte_carlo": "Monte Carlo, {num_samples} coalitions, similarity ×1000",
}
START_LABEL, END_LABEL = "<sot>", "<eot>"
# A merged token whose members are all padding (possible when a caption or video has fewer real
# tokens than its level has clusters).
PADDING_ONLY_LABEL = "(padding only)"
CLIP_END_OF_WORD = "</w>"


@dataclass
class LevelInteractionMap:
    """One level's word x frame picture. At the entity level rows are the caption's tokens and
    columns the sampled frames (padding left out: every map is exactly 0 there); at the action and
    event levels they are merged tokens, each standing for a cluster of entity-level tokens.

    Attributes:
        level: "entity", "action" or "event".
        interaction: `[rows, columns]` Banzhaf interaction values.
        similarity: `[rows, columns]` cosine similarity of the level's tokens, the map the
            estimators read (and the Monte Carlo game is played on).
        word_labels, frame_labels: one label per row / column.
        word_members, frame_members: for every row / column, the entity-level positions (indices
            into `InteractionMaps.words` / `.frames`) of the tokens merged into it.
    """

    level: str
    interaction: torch.Tensor
    similarity: torch.Tensor
    word_labels: list[str]
    frame_labels: list[str]
    word_members: list[list[int]]
    frame_members: list[list[int]]


@dataclass
class InteractionMaps:
    """What `interaction_maps` computed for one caption and one video.

    Attributes:
        caption: the caption as given.
        source: "estimator", "teacher" or "monte_carlo".
        description: how the interaction values were obtained, in words.
        words: the caption's tokens as the model reads them, start and end tokens included.
        frames: the sampled frames, uint8 `[frames, height, width, 3]`.
        timestamps: each sampled frame's time in seconds.
        levels: entity, action and event maps, in that order; merged tokens in the model's order
            (by cluster centre score), which the plot rearranges into reading order.
    """

    caption: str
    source: str
    description: str
    words: list[str]
    frames: np.ndarray
    timestamps: list[float]
    levels: list[LevelInteractionMap]


@torch.no_grad()
def interaction_maps(
    model: HBIModel,
    processor: HBIProcessor,
    video: VideoSource,
    caption: str,
    source: str = "estimator",
    num_samples: int = 200,
    seed: int = 0,
) -> InteractionMaps:
    """The word x frame Banzhaf interaction maps of `caption` and `video` at every level.

    Args:
        model: an HBI model (used as it is: call `.eval()` first if it was training).
        processor: its processor; the video is sampled as it samples videos (augmentation off).
        video: a path, the encoded bytes or a binary file object.
        caption: the text.
        source: where the values come from. "estimator": each level's student estimator applied
            to the level's matched word-frame similarity map (what HBI trains against the
            teacher); "teacher": the frozen teacher estimator on the same maps; "monte_carlo":
            Monte Carlo Banzhaf interaction values of the WTI game played on each level's map with
            the level's own token weights (the teacher's pre-training labels at the entity level;
            they carry the official x1000 scale).
        num_samples: coalitions per Monte Carlo value.
        seed: seeds the clustering noise of the token merges (so that the merged tokens and their
            labels are repeatable) and the Monte Carlo coalitions. The caller's RNG state is left
            as it was.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    video_processor = processor.video_processor
    decoded = read_video(
        video,
        video_framerate=video_processor.video_framerate,
        max_frames=video_processor.max_frames,
        backend=video_processor.decoding_backend,
        sampling=video_processor.frame_sampling,
    )
    # Handing the processor the decoded frames decodes the video once and gives exactly the
    # frames the thumbnails show.
    inputs = processor(text=[caption], videos=[decoded.frames], return_tensors="pt", do_augment=False)
    device = model.device
    # The model returns each level's tokens with its cluster assignments; the seed fixes the
    # clustering's tie-breaking noise without touching the caller's RNG state.
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device], device_type=device.type):
        _seed_device_generator(device, seed)
        model_inputs = {key: inputs[key].to(device) for key in ("input_ids", "attention_mask", "pixel_values_videos", "video_mask")}
        outputs = model(**model_inputs, return_loss=False, output_levels=True)
    text_levels, video_levels = outputs.text_levels, outputs.video_levels

    word_pieces = _word_pieces(processor.tokenizer, inputs["input_ids"][0], inputs["attention_mask"][0])
    num_words, num_frames = len(word_pieces), len(decoded.frames)
    word_members = _members_per_level(text_levels, num_words)
    frame_members = _members_per_level(video_levels, num_frames)
    monte_carlo_generator = torch.Generator(device=device).manual_seed(seed)

    levels = []
    for index, name in enumerate(LEVEL_NAMES):
        text_level, video_level = text_levels[index], video_levels[index]
        similarity = matched_word_frame_similarity(text_level, video_level)
        if source == "estimator":
            interaction = model.levels[index].banzhaf_student(similarity)
        elif source == "teacher":
            interaction = model.banzhaf_teacher(similarity)
        else:
            interaction = monte_carlo_banzhaf_interaction(
                similarity,
                _mask_or_all(text_level),
                _mask_or_all(video_level),
                text_level.weights,
                video_level.weights,
                num_samples=num_samples,
                generator=monte_carlo_generator,
            )
        if index == 0:
            # The entity maps are padded to max_words x max_frames; crop to the real tokens, which
            # the processor puts first.
            similarity, interaction = similarity[:, :num_words, :num_frames], interaction[:, :num_words, :num_frames]
        levels.append(
            LevelInteractionMap(
                level=name,
                interaction=interaction[0].float().cpu(),
                similarity=similarity[0].float().cpu(),
                word_labels=[_word_cluster_label(members, word_pieces) for members in word_members[index]],
                frame_labels=[_frame_cluster_label(members, decoded.timestamps) for members in frame_members[index]],
                word_members=word_members[index],
                frame_members=frame_members[index],
            )
        )
    return InteractionMaps(
        caption=caption,
        source=source,
        description=SOURCE_DESCRIPTIONS[source].format(num_samples=num_samples),
        words=levels[0].word_labels,
        frames=decoded.frames,
        timestamps=list(decoded.timestamps),
        levels=levels,
    )


# ------------------------------------------------------------------------------------------------
# Which entity-level tokens each merged token holds
# ------------------------------------------------------------------------------------------------


def _seed_device_generator(device: torch.device, seed: int) -> None:
    """Seeds the generator that draws the clustering noise: the one of the tokens' device."""
    if device.type == "cpu":
        torch.default_generator.manual_seed(seed)
    else:
        device_module = torch.get_device_module(device.type)
        with device_module.device(device):
            device_module.manual_seed(seed)


def _members_per_level(levels: tuple[LevelTokens, ...], num_real: int) -> list[list[list[int]]]:
    """For every level, every token's entity-level members (real tokens only): at the action level
    the words (frames) clustered into it, at the event level those of the action tokens clustered
    into it."""
    token_of_entity = torch.arange(num_real)  # which token of the current level holds each one
    num_tokens = num_real  # the entity level's real tokens; padding is left out of the picture
    members = []
    for level in levels:
        if level.cluster_index is not None:
            token_of_entity = level.cluster_index[0].cpu()[token_of_entity]
            num_tokens = level.tokens.shape[1]
        members.append([(token_of_entity == token).nonzero().flatten().tolist() for token in range(num_tokens)])
    return members


def _mask_or_all(level: LevelTokens) -> torch.Tensor:
    # Merged levels have no mask: every merged token is a player.
    return level.mask if level.mask is not None else torch.ones_like(level.weights)


# ------------------------------------------------------------------------------------------------
# Labels
# ------------------------------------------------------------------------------------------------


@dataclass
class _WordPiece:
    text: str
    ends_word: bool  # False for a piece of a word the tokenizer split, except its last
    special: bool = False  # the start or end token


def _word_pieces(tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[_WordPiece]:
    """The caption's real tokens, start and end tokens included: the model reads them as words like
    any other (they are players of the game and get a weight), so the picture shows them."""
    pieces = []
    for token_id in input_ids[attention_mask.bool()].tolist():
        if token_id == tokenizer.bos_token_id:
            pieces.append(_WordPiece(START_LABEL, ends_word=True, special=True))
        elif token_id == tokenizer.eos_token_id:
            pieces.append(_WordPiece(END_LABEL, ends_word=True, special=True))
        else:
            token = tokenizer.convert_ids_to_tokens(token_id)
            pieces.append(_WordPiece(tokenizer.decode([token_id]).strip(), token.endswith(CLIP_END_OF_WORD)))
    return pieces


def _consecutive_runs(positions: list[int]) -> list[list[int]]:
    runs = []
    for position in positions:
        if runs and position == runs[-1][-1] + 1:
            runs[-1].append(position)
        else:
            runs.append([position])
    return runs


def _continues_previous(pieces: list[_WordPiece], position: int) -> bool:
    """Whether the token at `position` is a later piece of the word before it (a word cut short
    by the length limit is followed by the end token, which is no piece of it)."""
    return position > 0 and not pieces[position - 1].ends_word and not pieces[position].special


def _word_cluster_label(members: list[int], pieces: list[_WordPiece]) -> str:
    """The member tokens as text: consecutive members as the phrase they form, gaps as " … " (a
    cluster need not be a phrase). Pieces of split words are glued, with a "-" where the word goes
    on outside the cluster: "c-" "-ha-" "-ses" for the pieces of "chases" on their own."""
    if not members:
        return PADDING_ONLY_LABEL
    phrases = []
    for run in _consecutive_runs(members):
        phrase = "-" if _continues_previous(pieces, run[0]) else ""
        for position in run:
            if position != run[0] and not _continues_previous(pieces, position):
                phrase += " "
            phrase += pieces[position].text
        phrases.append(phrase if pieces[run[-1]].ends_word else phrase + "-")
    return " … ".join(phrases)


def _frame_cluster_label(members: list[int], timestamps: list[float]) -> str:
    """`#i` (the frame's position among the sampled frames, as under the thumbnails) over its
    time; for a cluster, a line per run of consecutive frames, e.g. "#0–2: 0.0–2.0 s" and
    "#5: 5.0 s"."""
    if not members:
        return PADDING_ONLY_LABEL
    if len(members) == 1:
        return f"#{members[0]}\n{timestamps[members[0]]:.1f} s"
    lines = []
    for run in _consecutive_runs(members):
        first, last = run[0], run[-1]
        if first == last:
            lines.append(f"#{first}: {timestamps[first]:.1f} s")
        else:
            lines.append(f"#{first}–{last}: {timestamps[first]:.1f}–{timestamps[last]:.1f} s")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Plot
# ------------------------------------------------------------------------------------------------

# Sizes in inches, from which the default figure size follows.
FRAME_COLUMN_WIDTH = 0.75
CLUSTER_COLUMN_WIDTH = 1.1
WORD_ROW_HEIGHT = 0.3
MIN_HEATMAP_HEIGHT = 3.5
THUMBNAIL_GAP = 0.06
COLORBAR_WIDTH = 0.15
COLORBAR_LABELS_WIDTH = 0.6
TITLES_AND_FRAME_LABELS_HEIGHT = 2.3
FIGURE_MARGIN = 0.3
ENTITY_LABEL_WIDTH = 1.0
CLUSTER_LABEL_WIDTH = 2.2
CLUSTER_LABEL_CHARACTERS = 24
POINTS_PER_INCH = 72
FONT_SIZE = 10
COLORMAP = "RdBu_r"  # diverging: blue below 0, white at 0, red above


def plot_interaction_maps(
    maps: InteractionMaps,
    output_path: str | Path,
    title: str | None = None,
    figure_size: tuple[float, float] | None = None,
    dpi: int = 150,
) -> Path:
    """Draws one heatmap per level into a PNG and returns its path.

    Words run down the rows, frames along the columns: at the entity level each column carries
    the frame's thumbnail above it and its number and time below, at the action and event levels
    rows and columns are labelled with the words / frames merged into them. Colours are centred
    at 0 (red: the word and the frame add more to the match together than apart), each level with
    its own colour bar.

    Args:
        maps: what `interaction_maps` returned.
        output_path: where to write the PNG (folders are created).
        title: the figure's title (default: the caption).
        figure_size: `(width, height)` in inches; the PNG is `figure_size * dpi` pixels. By default
            it grows with the number of words and frames.
        dpi: pixels per inch.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    num_words, num_frames = maps.levels[0].interaction.shape
    frame_height, frame_width = maps.frames.shape[1:3]
    thumbnail_height = FRAME_COLUMN_WIDTH * frame_height / frame_width
    heatmap_widths = [num_frames * FRAME_COLUMN_WIDTH] + [
        level.interaction.shape[1] * CLUSTER_COLUMN_WIDTH for level in maps.levels[1:]
    ]
    if figure_size is None:
        heatmap_height = max(num_words * WORD_ROW_HEIGHT, MIN_HEATMAP_HEIGHT)
        label_widths = ENTITY_LABEL_WIDTH + CLUSTER_LABEL_WIDTH * (len(maps.levels) - 1)
        colorbar_widths = len(maps.levels) * (COLORBAR_WIDTH + COLORBAR_LABELS_WIDTH)
        figure_size = (
            sum(heatmap_widths) + label_widths + colorbar_widths + FIGURE_MARGIN,
            heatmap_height + thumbnail_height + TITLES_AND_FRAME_LABELS_HEIGHT,
        )

    # A figure on an Agg canvas, not pyplot: no display, no global state.
    figure = Figure(figsize=figure_size, dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(
        f"{title or maps.caption}\nword × frame Banzhaf interaction ({maps.description})", fontsize=FONT_SIZE + 3
    )
    # Per level a heatmap column and a colour bar column, the heatmaps as wide as their columns.
    width_ratios = [ratio for width in heatmap_widths for ratio in (width, COLORBAR_WIDTH)]
    grid = figure.add_gridspec(1, len(width_ratios), width_ratios=width_ratios)
    heatmaps = []
    for index, level in enumerate(maps.levels):
        axes = figure.add_subplot(grid[0, 2 * index])
        rows, columns = _reading_order(level.word_members), _reading_order(level.frame_members)
        values = level.interaction.numpy()[np.ix_(rows, columns)]
        limit = float(np.abs(values).max()) or 1.0  # symmetric limits put 0 at the centre colour
        image = axes.imshow(values, cmap=COLORMAP, vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
        # Above the entity map, the title leaves room for the thumbnails (None: the default pad).
        title_pad = (thumbnail_height + 2 * THUMBNAIL_GAP) * POINTS_PER_INCH if index == 0 else None
        row_kind, column_kind = ("tokens", "frames") if index == 0 else ("word clusters", "frame clusters")
        axes.set_title(
            f"{level.level} level: {len(rows)} {row_kind} × {len(columns)} {column_kind}",
            fontsize=FONT_SIZE + 1,
            pad=title_pad,
        )
        label_width = None if index == 0 else CLUSTER_LABEL_CHARACTERS
        axes.set_yticks(range(len(rows)), [_wrapped(level.word_labels[row], label_width) for row in rows])
        axes.set_xticks(range(len(columns)), [level.frame_labels[column] for column in columns])
        axes.tick_params(labelsize=FONT_SIZE - (0 if index == 0 else 1), length=0)
        colorbar = figure.colorbar(image, cax=figure.add_subplot(grid[0, 2 * index + 1]))
        colorbar.ax.tick_params(labelsize=FONT_SIZE - 1)
        colorbar.set_label("interaction", fontsize=FONT_SIZE - 1)
        heatmaps.append(axes)

    # The thumbnails go over the entity map's columns, which are known once the layout is done;
    # the layout is then frozen so that saving does not move the heatmaps from under them.
    figure.draw_without_rendering()
    figure.set_layout_engine("none")
    _add_thumbnails(figure, heatmaps[0], maps.frames, thumbnail_height)

    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output_path, format="png", dpi=dpi)
    return output_path


def _add_thumbnails(figure, heatmap, frames: np.ndarray, max_height: float) -> None:
    """One small image per frame, centred over its column of `heatmap`, at most `max_height`
    inches high and the column's width wide."""
    figure_width, figure_height = figure.get_size_inches()
    box = heatmap.get_position()
    column_width = box.width * figure_width / len(frames)
    aspect = frames.shape[1] / frames.shape[2]
    width = min(0.92 * column_width, max_height / aspect)
    height = width * aspect
    for index, frame in enumerate(frames):
        left = box.x0 + ((index + 0.5) * column_width - width / 2) / figure_width
        bottom = box.y1 + THUMBNAIL_GAP / figure_height
        axes = figure.add_axes((left, bottom, width / figure_width, height / figure_height))
        axes.imshow(frame)
        axes.set_axis_off()


def _reading_order(members: list[list[int]]) -> list[int]:
    """Merged tokens ordered by their first member (sentence order for words, time for frames),
    those holding only padding last."""
    return sorted(range(len(members)), key=lambda token: (not members[token], members[token][:1]))


def _wrapped(label: str, width: int | None) -> str:
    return label if width is None else "\n".join(textwrap.wrap(label, width)) or label
