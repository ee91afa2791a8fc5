"""The random streams of a corpus seed, and the helpers that draw from them."""

from collections.abc import Sequence

import numpy as np

# Independent random streams of one seed, so that e.g. new caption phrasings leave pixels alone.
FAMILY_STREAM, VARIANT_STREAM, TIMING_STREAM, CAPTION_STREAM, BACKGROUND_STREAM, SPLIT_STREAM = range(6)


def _rng(seed: int, stream: int, *indices: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, *indices])


def _pick(rng: np.random.Generator, options: Sequence):
    return options[rng.integers(len(options))]
