"""Pre-training of the Banzhaf interaction estimator that HBI uses as its frozen teacher
(docs/banzhaf.md).

The recipe: an HBI model (CLIP, temporal module, frame position embeddings and entity-level weight
heads) stays frozen and gives, for every matched text-video pair, its entity-level word-frame
similarity map and token weights; Monte Carlo Banzhaf interaction labels (100 samples, official
semantics) are computed from them once and cached as safetensors shards; the estimator then
learns to predict the labels from the map (MSE against the masked prediction), with the official
optimiser (BertAdam, lr 1e-2, weight decay 0.2 except on biases, 10% warm-up then cosine over 5
epochs).

The saved file holds a `BanzhafEstimator` state dict; an HBI model takes it as its teacher with
`model.banzhaf_teacher.load_state_dict(load_estimator_state_dict(path))` (from the model's
converter module, which also reads the official estimator checkpoints).
"""

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..data import HBIDataCollator, VideoTextRecord, as_record
from ..models.hbi.banzhaf_estimator import BanzhafEstimator
from ..models.hbi.modeling_hbi import HBIModel, HBITextOutput, HBIVideoOutput
from ..models.hbi.wti import matched_word_frame_similarity
from .banzhaf_labels import monte_carlo_banzhaf_interaction
from .evaluation import encode_corpus
from .model_identity import model_identity
from .optimization import BertAdam, warmup_cosine_schedule

SHARD_KEYS = ("similarity_map", "text_mask", "video_mask", "labels")
MANIFEST = "labels.json"
# Video processing settings that change the maps a cache holds.
LABEL_VIDEO_SETTINGS = ("max_frames", "video_framerate", "frame_sampling", "size", "crop_size", "image_mean", "image_std")
# Parameter names containing any of these skip weight decay in the official estimator script
# (its retrieval script exempts only "bias": see `hbi_parameter_groups`).
NO_DECAY_NAMES = ("bias", "LayerNorm.bias", "LayerNorm.weight")


def label_cache_key(model: HBIModel, collator: HBIDataCollator, num_samples: int, seed: int) -> dict:
    """What a label cache was made with: the model (architecture hash and weights fingerprint),
    the text and video settings, and the Monte Carlo settings. A cache is reused only for the
    same key."""
    identity = model_identity(model)
    video_settings = collator.video_processor.to_dict()
    video = {key: video_settings.get(key) for key in LABEL_VIDEO_SETTINGS}
    video.update(collator.video_options)
    return {
        "config_hash": identity["config_hash"],
        "weights_fingerprint": identity["weights_fingerprint"],
        "max_words": collator.processor.max_words,
        "video": json.loads(json.dumps(video, default=str)),
        "num_samples": num_samples,
        "seed": seed,
        "semantics": "official",
    }


def check_label_cache(label_dir: str | Path, key: dict) -> None:
    """Raises ValueError, naming what differs, unless the cache in `label_dir` was made with `key`."""
    manifest = json.loads((Path(label_dir) / MANIFEST).read_text())
    recorded = manifest.get("key")
    if recorded is None:
        raise ValueError(f"the label cache {label_dir} records no model or settings: delete it to label again")
    differences = sorted(name for name in key if recorded.get(name) != key[name])
    if differences:
        raise ValueError(
            f"the label cache {label_dir} was made with other {', '.join(differences).replace('_', ' ')} than this "
            "run: delete it (or give another --label_cache) to label again with this model and these settings"
        )


@torch.no_grad()
def entity_similarity_maps(model: HBIModel, texts: HBITextOutput, videos: HBIVideoOutput) -> dict[str, torch.Tensor]:
    """The entity-level word-frame similarity map of each matched pair (text i with video i)
    `[batch, words, frames]` (masked, as the official estimator sees it) with the masks and the
    softmaxed token weights."""
    text_entity = model.text_levels(texts.text_embeds, texts.attention_mask, num_levels=1)[0]
    video_entity = model.video_levels(videos.video_embeds, videos.video_mask, num_levels=1)[0]
    return {
        "similarity_map": matched_word_frame_similarity(text_entity, video_entity),
        "text_mask": texts.attention_mask,
        "video_mask": videos.video_mask,
        "text_weight": text_entity.weights,
        "video_weight": video_entity.weights,
    }


@torch.no_grad()
def label_pairs(
    model: HBIModel, texts: HBITextOutput, videos: HBIVideoOutput, num_samples: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """What the label cache stores for matched pairs (text i with video i), on the CPU: their
    entity-level maps, masks and Monte Carlo Banzhaf interaction labels."""
    maps = entity_similarity_maps(model, texts, videos)
    labels = monte_carlo_banzhaf_interaction(
        maps["similarity_map"], maps["text_mask"], maps["video_mask"], maps["text_weight"],
        maps["video_weight"], num_samples=num_samples, generator=generator,
    )
    return {**{key: maps[key].cpu() for key in SHARD_KEYS[:3]}, "labels": labels.cpu()}


def write_label_shards(
    model: HBIModel,
    collator: HBIDataCollator,
    records: Sequence[VideoTextRecord],
    output_dir: str | Path,
    num_samples: int = 100,
    seed: int = 0,
    batch_size: int = 32,
    pairs_per_shard: int = 4096,
    progress: bool = True,
) -> int:
    """Labels every record's caption with its clip once and writes the labels, with the maps and
    masks, as safetensors shards of `pairs_per_shard` records plus a manifest. Each shard's
    distinct clips are decoded and encoded once (`encode_corpus`); records whose video fails to
    decode are counted by the collator and left out. Returns the number of labelled pairs."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    records = [as_record(record) for record in records]
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    shard_names, total = [], 0
    was_training = model.training
    model.eval()
    try:
        for group_start in tqdm(range(0, len(records), pairs_per_shard), desc="Banzhaf label shards",
                                unit="shard", disable=not progress):
            corpus = encode_corpus(model, collator, records[group_start : group_start + pairs_per_shard],
                                   batch_size, progress=progress)
            parts = []
            for start in range(0, len(corpus.text_to_video), batch_size):
                rows = torch.tensor(corpus.text_to_video[start : start + batch_size],
                                    device=corpus.videos.video_embeds.device)
                texts = HBITextOutput(
                    text_embeds=corpus.texts.text_embeds[start : start + batch_size],
                    attention_mask=corpus.texts.attention_mask[start : start + batch_size],
                )
                videos = HBIVideoOutput(video_embeds=corpus.videos.video_embeds[rows],
                                        video_mask=corpus.videos.video_mask[rows])
                parts.append(label_pairs(model, texts, videos, num_samples, generator))
            shard_names.append(_write_shard(parts, output_dir, len(shard_names)))
            total += len(corpus.text_to_video)
    finally:
        model.train(was_training)
    manifest = {"pairs": total, "num_samples": num_samples, "seed": seed, "shards": shard_names,
                "model": model.config.name_or_path, "key": label_cache_key(model, collator, num_samples, seed)}
    (output_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return total


def _write_shard(parts: list[dict], output_dir: Path, index: int) -> str:
    name = f"labels-{index:05d}.safetensors"
    tensors = {key: torch.cat([part[key] for part in parts]).contiguous() for key in SHARD_KEYS}
    save_file(tensors, str(output_dir / name))
    return name


class LabelShardDataset(torch.utils.data.Dataset):
    """Cached maps, masks and labels, one pair per item (all shards are held in memory: a pair of
    24 words x 12 frames is 2.4 kB)."""

    def __init__(self, label_dir: str | Path):
        label_dir = Path(label_dir)
        manifest_path = label_dir / MANIFEST
        if not manifest_path.exists():
            raise FileNotFoundError(f"{label_dir} holds no Banzhaf label cache ({MANIFEST} is missing)")
        self.manifest = json.loads(manifest_path.read_text())
        shards = [load_file(str(label_dir / name)) for name in self.manifest["shards"]]
        self.tensors = {key: torch.cat([shard[key] for shard in shards]) for key in SHARD_KEYS}

    def __len__(self) -> int:
        return self.tensors["labels"].shape[0]

    def __getitem__(self, index):
        return {key: value[index] for key, value in self.tensors.items()}


def masked_prediction(estimator: BanzhafEstimator, batch: dict) -> torch.Tensor:
    mask = batch["text_mask"][:, :, None] * batch["video_mask"][:, None, :]
    return estimator(batch["similarity_map"]) * mask.to(batch["similarity_map"].dtype)


def estimator_mse(estimator: BanzhafEstimator, batch: dict) -> torch.Tensor:
    """The official loss: mean squared error over every cell of the maps, with the prediction
    masked (labels are already 0 on padding)."""
    return torch.nn.functional.mse_loss(masked_prediction(estimator, batch), batch["labels"])


@dataclass
class EstimatorEpoch:
    epoch: int
    train_mse: float
    heldout_mse: float
    mean_baseline_mse: float


@torch.no_grad()
def heldout_mse(estimator: BanzhafEstimator, loader, label_mean: float) -> tuple[float, float]:
    """MSE of the estimator and of predicting `label_mean` on every real cell (0 on padding)."""
    estimator.eval()
    squared_error = baseline_error = cells = 0.0
    for batch in loader:
        mask = (batch["text_mask"][:, :, None] * batch["video_mask"][:, None, :]).float()
        squared_error += float(((masked_prediction(estimator, batch) - batch["labels"]) ** 2).sum())
        baseline_error += float(((label_mean * mask - batch["labels"]) ** 2).sum())
        cells += batch["labels"].numel()
    return squared_error / cells, baseline_error / cells


def estimator_parameter_groups(estimator: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The official estimator groups: `weight_decay` for every trainable parameter but those
    named in `NO_DECAY_NAMES` (the convolutions' biases of a `BanzhafEstimator`), 0 for those."""
    decayed, exempt = [], []
    for name, parameter in estimator.named_parameters():
        if parameter.requires_grad:
            (exempt if any(part in name for part in NO_DECAY_NAMES) else decayed).append(parameter)
    groups = [{"params": decayed, "weight_decay": weight_decay}, {"params": exempt, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def train_estimator(
    estimator: BanzhafEstimator,
    train_data: torch.utils.data.Dataset,
    heldout_data: torch.utils.data.Dataset | None = None,
    learning_rate: float = 1e-2,
    epochs: int = 10,
    batch_size: int = 128,
    weight_decay: float = 0.2,
    warmup: float = 0.1,
    schedule_epochs: float = 5.0,
    max_grad_norm: float = 1.0,
    seed: int = 0,
    on_epoch_end=None,
) -> list[EstimatorEpoch]:
    """The official estimator optimisation; returns one record per epoch with the held-out MSE
    next to that of predicting the training labels' mean. `on_epoch_end(record)` is called after
    each epoch (the official run keeps every epoch's weights and picks one)."""
    generator = torch.Generator().manual_seed(seed)
    train_loader = torch.utils.data.DataLoader(train_data, batch_size=batch_size, shuffle=True, generator=generator)
    heldout_loader = torch.utils.data.DataLoader(heldout_data or train_data, batch_size=batch_size)
    label_mean = real_cell_label_mean(train_loader)

    optimizer = BertAdam(estimator_parameter_groups(estimator, weight_decay), lr=learning_rate, max_grad_norm=max_grad_norm)
    scheduler = warmup_cosine_schedule(optimizer, max(1, math.ceil(len(train_loader) * schedule_epochs)), warmup)
    history = []
    for epoch in range(1, epochs + 1):
        estimator.train()
        running, steps = 0.0, 0
        for batch in tqdm(train_loader, desc=f"estimator epoch {epoch}/{epochs}", unit="batch", leave=False):
            loss = estimator_mse(estimator, batch)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(estimator.parameters(), max_grad_norm)
            optimizer.step()
            scheduler.step()
            running, steps = running + loss.item(), steps + 1
        mse, baseline = heldout_mse(estimator, heldout_loader, label_mean)
        history.append(EstimatorEpoch(epoch, running / max(steps, 1), mse, baseline))
        if on_epoch_end is not None:
            on_epoch_end(history[-1])
    return history


def real_cell_label_mean(loader) -> float:
    """Mean label over real (unpadded) word-frame cells: the constant-prediction baseline."""
    total = cells = 0.0
    for batch in loader:
        total += float(batch["labels"].sum())
        cells += float((batch["text_mask"][:, :, None] * batch["video_mask"][:, None, :]).sum())
    return total / max(cells, 1.0)


def save_estimator(estimator: BanzhafEstimator, path: str | Path) -> None:
    save_file({key: value.contiguous() for key, value in estimator.state_dict().items()}, str(path),
              metadata={"width": str(estimator.width)})
