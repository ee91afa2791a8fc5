"""Which model an index belongs to, and what the model derives alike at indexing and at search
time: the check of the model's identity (`hbi_transformers.training.model_identity`), the pooled
first-stage embeddings, and the fixed noise of the token merging."""

from contextlib import contextmanager

import torch

from ...models.hbi.wti import LevelTokens, l2_normalize

# The clustering that makes the action / event tokens breaks density ties with random noise;
# scoring under a fixed seed makes a search repeatable and independent of the caller's RNG.
MERGE_NOISE_SEED = 0


class IndexModelMismatchError(ValueError):
    """The index was built with another model or other video settings than the ones given."""


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
