"""The published HBI runs as named recipes: every value of the official command (jpthu17/HBI @
b261e9c, README "Train on ..." sections; `main_retrieval.py` / `main_vqa.py` argparse defaults for
what a command does not pass), data settings included. A recipe gives defaults; explicit options
override them (see `hbi_transformers.cli.arguments.apply_recipe`)."""

from dataclasses import dataclass, field

# Officially the batch is global: each of the processes reads batch_size / world_size.
OFFICIAL_RETRIEVAL_BATCH, OFFICIAL_QA_BATCH = 128, 32


@dataclass(frozen=True)
class Recipe:
    """`values` are option names of the commands (data, model and training options) and their
    official values; `global_batch_size` is split over the processes of the run."""

    name: str
    source: str
    global_batch_size: int
    values: dict = field(default_factory=dict)


_RETRIEVAL = dict(
    learning_rate=1e-4, coef_lr=1e-3, weight_decay=0.2, warmup_ratio=0.1, schedule_epochs=5.0,
    video_framerate=1.0, distillation_kl_weight=2.0, banzhaf_kl_weight=1.0,
)
_MSRVTT = dict(_RETRIEVAL, dataset="msrvtt", num_train_epochs=5.0, max_words=24, max_frames=12, frame_sampling="fps",
               augment=True)
_PARAGRAPHS = dict(max_words=64, max_frames=64, frame_sampling="per_second", augment=False)

RECIPES = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            "msrvtt", "README 'Train on MSR-VTT-9k': 2 GPUs, --epochs 5 --lr 1e-4 --coef_lr 1e-3 --batch_size 128 "
            "--max_words 24 --max_frames 12 --video_framerate 1 --kl 2 --skl 1",
            OFFICIAL_RETRIEVAL_BATCH,
            dict(_MSRVTT, msrvtt_train_split="9k"),
        ),
        Recipe(
            "msrvtt-7k", "as 'msrvtt' (the official loaders read MSRVTT_train.9k.csv only), training on the 7k "
            "split of MSRVTT_train.7k.csv",
            OFFICIAL_RETRIEVAL_BATCH,
            dict(_MSRVTT, msrvtt_train_split="7k"),
        ),
        Recipe(
            "activitynet", "README 'Train on ActivityNet Captions': 8 GPUs, --epochs 10 --lr 1e-4 --coef_lr 1e-3 "
            "--batch_size 128 --max_words 64 --max_frames 64 --video_framerate 1 --kl 2 --skl 1",
            OFFICIAL_RETRIEVAL_BATCH,
            dict(_RETRIEVAL, **_PARAGRAPHS, dataset="activitynet", num_train_epochs=10.0),
        ),
        Recipe(
            "didemo", "no published command: ActivityNet's paragraph settings (64 words, 64 frames, one frame "
            "per second) with the argparse defaults (--epochs 5) and the published --kl 2 --skl 1",
            OFFICIAL_RETRIEVAL_BATCH,
            dict(_RETRIEVAL, **_PARAGRAPHS, dataset="didemo", num_train_epochs=5.0),
        ),
        Recipe(
            "msrvtt-qa", "README 'Train on MSR-VTT-QA': 2 GPUs, --epochs 5 --batch_size 32 --lr 1e-4 --coef_lr 1e-3 "
            "--max_words 32 --max_frames 12 --feature_framerate 1 --freeze_layer_num 0 --kl 2 --skl 1",
            OFFICIAL_QA_BATCH,
            dict(learning_rate=1e-4, coef_lr=1e-3, num_train_epochs=5.0, max_words=32, max_frames=12,
                 video_framerate=1.0, frame_sampling="fps", qa_distillation_kl_weight=2.0, banzhaf_kl_weight=1.0,
                 freeze_clip_embeddings=True, schedule_epochs=None),
        ),
    )
}


def per_process_batch_size(recipe: Recipe, world_size: int) -> int:
    """The official split of the global batch over the processes."""
    if recipe.global_batch_size % world_size:
        raise ValueError(
            f"the {recipe.name} recipe's global batch of {recipe.global_batch_size} does not split over "
            f"{world_size} processes: use a divisor of it, or set --per_device_train_batch_size"
        )
    return recipe.global_batch_size // world_size
