"""Which model made a result that outlives it (a search index, a Banzhaf label cache): a hash of
the architecture settings and a fingerprint of the weights, compared before the result is reused."""

import hashlib
import json
import os

import torch

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
