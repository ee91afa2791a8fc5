"""Which model an index belongs to, and what the model derives alike at indexing and at search
time: the model's identity (architecture hash, weights fingerprint), the pooled first-stage
embeddings, and the fixed noise of the token merging."""

import hashlib
import json
import os
from contextlib import contextmanager

import torch

from ...models.hbi.wti import LevelTokens, l2_normalize

# The clustering that makes the action / event tokens breaks density ties with random noise;
# scoring under a fixed seed makes a search repeatable and independent of the caller's RNG.
MERGE_NOISE_SEED = 0
# Elements of each weight tensor hashed into the model fingerprint: training changes every
# weight, so a strided sample tells two checkpoints apart without hashing gigabytes.
FINGERPRINT_SAMPLES_PER_TENSOR = 4096
# HBI settings that change the stored embeddings or how they are scored (the tower shapes are in
# the weights fingerprint). Level weights are left out on purpose: re-weighting the levels at
# search time over the same index is legitimate.
IDENTITY_CONFIG_KEYS = (
    "projection_dim",
    "temporal_module",
    "temporal_num_layers",
    "temporal_layer_norm_eps",
    "interaction",
    "text_merge_ratios",
    "video_merge_ratios",
    "cluster_num_neighbors",
    "merge_attention_heads",
)
IDENTITY_TOWER_KEYS = ("hidden_act", "layer_norm_eps", "num_attention_heads", "image_size", "patch_size")


class IndexModelMismatchError(ValueError):
    """The index was built with another model or other video settings than the ones given."""


def model_identity(model) -> dict:
    """What an index records about the model that encoded it: `name_or_path` (to reload it; not
    compared), a hash of the architecture settings and a fingerprint of the weights (compared)."""
    name = model.name_or_path or ""
    if name and os.path.isdir(name):
        name = os.path.abspath(name)
    return {
        "name_or_path": name,
        "config_hash": _config_hash(model.config),
        "weights_fingerprint": _weights_fingerprint(model),
    }


def _config_hash(config) -> str:
    settings = {key: getattr(config, key) for key in IDENTITY_CONFIG_KEYS}
    for tower in ("text_config", "vision_config"):
        settings[tower] = {key: getattr(getattr(config, tower), key, None) for key in IDENTITY_TOWER_KEYS}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@torch.no_grad()
def _weights_fingerprint(model) -> str:
    """A hash of every weight's name, shape and a strided sample of its values (as float32, so the
    same weights on any device agree; a model cast to another dtype has other values)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // FINGERPRINT_SAMPLES_PER_TENSOR)
        sample = flat[::step].to("cpu", torch.float32).contiguous()
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def check_same_model(recorded: dict, current: dict, index_dir) -> None:
    """Raises `IndexModelMismatchError` unless two model identities are of the same model."""
    differences = [key for key in ("config_hash", "weights_fingerprint") if recorded[key] != current[key]]
    if differences:
        raise IndexModelMismatchError(
            f"the index at {index_dir} was built with another model ({recorded['name_or_path'] or 'unnamed'}; "
            f"{' and '.join(key.replace('_', ' ') for key in differences)} differ from those of "
            f"{current['name_or_path'] or 'the given model'}). Embeddings of one model mean nothing to another: "
            "search it with the model that built it, or build a new index with this one."
        )


def pooled_embeddings(entity: LevelTokens) -> torch.Tensor:
    """First-stage vectors `[n, D]` of texts or videos: the entity-level weight head's weighted
    mean of the L2-normalised word (frame) embeddings, L2-normalised.

    Why this pooling: the entity score is `(sum_t w_t max_v S[t, v] + sum_v w_v max_t S[t, v]) / 2`
    over word-frame cosines `S`. Replacing each max by the weighted mean over the other side gives
    `<sum_t w_t x_t, sum_v w_v y_v>`, the dot product of the weighted means: the words and frames
    the HBI score leans on (by its own weights) lead the first stage too, where a plain mean would
    give stop words and uninformative frames an equal say. The vectors are normalised so that
    long and short captions rank videos alike (a cosine).
    """
    weights = entity.weights if entity.mask is None else entity.weights * entity.mask
    return l2_normalize((weights[..., None] * entity.tokens).sum(dim=1))


@contextmanager
def fixed_merge_noise(device: torch.device):
    """Seeds the token clustering's tie-breaking noise without touching the caller's RNG state."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(MERGE_NOISE_SEED)
        yield
