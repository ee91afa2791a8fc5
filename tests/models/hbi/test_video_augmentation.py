import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from hbi_transformers.models.hbi.video_augmentation import (
    GREY_FILL,
    INCREASING_OPERATIONS,
    OPERATIONS,
    STANDARD_OPERATIONS,
    AugmentationDecisions,
    OperationDecision,
    VideoRandAugment,
    operation_decision,
)


def random_clip(frames=3, height=12, width=20, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def as_pil(clip):
    return [Image.fromarray(frame) for frame in clip]


def as_array(images):
    return np.stack([np.asarray(image) for image in images])


def apply_one(name, frame, magnitude, negative=False):
    """Applies one operation to one uint8 frame through the public API."""
    decisions = AugmentationDecisions((operation_decision(name, magnitude, negative),))
    return VideoRandAugment().apply(frame[None], decisions)[0].astype(int)


# Config string.


def test_hbi_config_string():
    augment = VideoRandAugment.from_config_string("rand-m7-n4-mstd0.5-inc1")
    assert (augment.num_ops, augment.magnitude, augment.magnitude_std) == (4, 7.0, 0.5)
    assert augment.increasing and augment.operation_names == INCREASING_OPERATIONS
    assert augment.probability == 0.5 and augment.fill == GREY_FILL == (128, 128, 128)
    assert augment.resample == Image.Resampling.BICUBIC


def test_config_string_defaults_are_timms_and_kwargs_pass_through():
    augment = VideoRandAugment.from_config_string("rand", probability=1.0)
    assert (augment.num_ops, augment.magnitude, augment.magnitude_std) == (2, 10.0, 0.0)
    assert not augment.increasing and augment.operation_names == STANDARD_OPERATIONS
    assert augment.probability == 1.0
    assert not VideoRandAugment.from_config_string("rand-inc0").increasing


@pytest.mark.parametrize("config", ["auto-m7", "rand-m7-w0", "rand-x3", "rand-m", "rand-mx", "rand-n2.5", "rand-7"])
def test_config_string_errors(config):
    with pytest.raises(ValueError):
        VideoRandAugment.from_config_string(config)


def test_operation_sets():
    assert len(INCREASING_OPERATIONS) == len(STANDARD_OPERATIONS) == 15
    assert set(INCREASING_OPERATIONS) | set(STANDARD_OPERATIONS) == set(OPERATIONS)
    assert set(INCREASING_OPERATIONS) - set(STANDARD_OPERATIONS) == {
        "PosterizeIncreasing", "SolarizeIncreasing", "ColorIncreasing", "ContrastIncreasing",
        "BrightnessIncreasing", "SharpnessIncreasing",
    }  # fmt: skip


# Per-clip draws.


def test_decisions_shape_and_clip_level_application():
    augment = VideoRandAugment(probability=1.0)
    decisions = augment.sample_decisions(3)
    assert len(decisions.operations) == 4 and all(d.applied for d in decisions.operations)
    clip = random_clip()
    together = augment.apply(clip, decisions)
    one_by_one = np.stack([augment.apply(frame[None], decisions)[0] for frame in clip])
    np.testing.assert_array_equal(together, one_by_one)


@pytest.mark.parametrize("seed", range(10))
def test_identical_frames_stay_identical(seed):
    clip = np.repeat(random_clip(frames=1, seed=seed), 4, axis=0)
    augmented = VideoRandAugment()(clip, generator=seed)
    assert (augmented == augmented[:1]).all()


@pytest.mark.parametrize("seed", range(5))
def test_call_equals_apply_of_sampled_decisions(seed):
    augment = VideoRandAugment()
    clip = as_pil(random_clip(seed=seed))
    expected = augment.apply(clip, augment.sample_decisions(torch.Generator().manual_seed(seed)))
    actual = augment(clip, generator=torch.Generator().manual_seed(seed))
    assert [np.asarray(a).tolist() for a in actual] == [np.asarray(e).tolist() for e in expected]


def test_skipped_operations_carry_no_magnitude():
    decisions = VideoRandAugment(num_ops=6, probability=0.0).sample_decisions(0)
    assert [(d.applied, d.magnitude, d.argument) for d in decisions.operations] == [(False, None, None)] * 6
    clip = random_clip()
    np.testing.assert_array_equal(VideoRandAugment(probability=0.0)(clip, generator=0), clip)


@pytest.mark.parametrize(
    "make_generator",
    [random.Random, lambda seed: seed, np.random.default_rng, lambda seed: torch.Generator().manual_seed(seed)],
)
def test_reproducible_with_seeded_generator(make_generator):
    augment = VideoRandAugment()
    assert augment.sample_decisions(make_generator(7)) == augment.sample_decisions(make_generator(7))
    samples = {augment.sample_decisions(make_generator(seed)) for seed in range(20)}
    assert len(samples) == 20


def test_generator_advances_and_global_rngs_untouched():
    augment = VideoRandAugment()
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    global_states = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    generator = torch.Generator().manual_seed(0)
    first, second = augment.sample_decisions(generator), augment.sample_decisions(generator)
    assert first != second
    assert random.getstate() == global_states[0]
    np.testing.assert_array_equal(np.random.get_state()[1], global_states[1])
    assert torch.equal(torch.get_rng_state(), global_states[2])


def test_no_generator_uses_torch_global_rng():
    augment = VideoRandAugment()
    torch.manual_seed(5)
    first = augment.sample_decisions()
    torch.manual_seed(5)
    assert augment.sample_decisions() == first


def test_different_seeds_give_different_clips():
    augment = VideoRandAugment(probability=1.0)
    clip = random_clip()
    outputs = {augment(clip, generator=seed).tobytes() for seed in range(5)}
    assert len(outputs) == 5


def test_bad_generator_type():
    with pytest.raises(TypeError):
        VideoRandAugment().sample_decisions("seed")


# Magnitudes.


def test_magnitude_drawn_per_operation_and_clipped():
    augment = VideoRandAugment(num_ops=8, magnitude=9.0, magnitude_std=5.0, probability=1.0)
    magnitudes = [d.magnitude for seed in range(50) for d in augment.sample_decisions(seed).operations]
    assert min(magnitudes) == 0.0 and max(magnitudes) == 10.0
    assert len(set(magnitudes)) > 100  # one draw per operation, not one per clip
    noiseless = VideoRandAugment(magnitude=7.0, magnitude_std=0.0, probability=1.0)
    assert {d.magnitude for d in noiseless.sample_decisions(0).operations} == {7.0}


def test_signs_are_drawn_for_geometric_and_increasing_enhancements_only():
    augment = VideoRandAugment(num_ops=20, magnitude_std=0.0, probability=1.0)
    drawn = [d for seed in range(20) for d in augment.sample_decisions(seed).operations]
    rotations = {d.argument for d in drawn if d.name == "Rotate"}
    assert rotations == {21.0, -21.0}
    brightness = {round(d.argument, 9) for d in drawn if d.name == "BrightnessIncreasing"}
    assert brightness == {1.63, 0.37}
    assert {d.argument for d in drawn if d.name == "SolarizeAdd"} == {77}


@pytest.mark.parametrize(
    "name, magnitude, negative, argument",
    [
        ("Rotate", 10.0, False, 30.0),
        ("Rotate", 5.0, True, -15.0),
        ("ShearX", 10.0, True, -0.3),
        ("TranslateYRel", 10.0, False, 0.45),
        ("PosterizeIncreasing", 0.0, False, 4),
        ("PosterizeIncreasing", 7.0, False, 2),
        ("Posterize", 7.0, False, 2),
        ("SolarizeIncreasing", 7.0, False, 77),
        ("Solarize", 7.0, False, 179),
        ("SolarizeAdd", 7.0, True, 77),
        ("ContrastIncreasing", 10.0, True, 0.1),
        ("Contrast", 0.0, False, 0.1),
        ("Invert", 7.0, True, None),
    ],
)
def test_magnitude_to_argument(name, magnitude, negative, argument):
    assert operation_decision(name, magnitude, negative).argument == pytest.approx(argument)


def test_operation_decision_validates():
    with pytest.raises(ValueError):
        operation_decision("Rotate", 10.5)
    with pytest.raises(ValueError):
        operation_decision("Blur", 5.0)


# Operations against independent expectations.


def test_invert():
    frame = random_clip(frames=1)[0]
    np.testing.assert_array_equal(apply_one("Invert", frame, 7.0), 255 - frame.astype(int))


def test_posterize_keeps_top_bits():
    frame = random_clip(frames=1)[0]
    np.testing.assert_array_equal(apply_one("PosterizeIncreasing", frame, 5.0), frame & 0b11000000)
    np.testing.assert_array_equal(apply_one("PosterizeIncreasing", frame, 10.0), np.zeros_like(frame))


def test_solarize_threshold():
    frame = random_clip(frames=1)[0].astype(int)
    expected = np.where(frame >= 128, 255 - frame, frame)
    np.testing.assert_array_equal(apply_one("SolarizeIncreasing", frame.astype(np.uint8), 5.0), expected)


def test_solarize_add():
    frame = random_clip(frames=1)[0].astype(int)
    expected = np.where(frame < 128, np.minimum(frame + 110, 255), frame)
    np.testing.assert_array_equal(apply_one("SolarizeAdd", frame.astype(np.uint8), 10.0), expected)


def test_brightness_scales_values():
    frame = np.full((4, 4, 3), 100, dtype=np.uint8)
    assert (apply_one("BrightnessIncreasing", frame, 10.0) == 190).all()
    assert (apply_one("BrightnessIncreasing", frame, 10.0, negative=True) == 10).all()


def test_auto_contrast_stretches_to_full_range():
    frame = np.linspace(50, 100, 4 * 4 * 3).reshape(4, 4, 3).round().astype(np.uint8)
    out = apply_one("AutoContrast", frame, 0.0)
    assert out.min() == 0 and out.max() == 255


def test_translate_moves_by_whole_pixels_and_fills_grey():
    frame = random_clip(frames=1, height=12, width=20)[0]
    left = apply_one("TranslateXRel", frame, 10.0)  # 0.45 * 20 = 9 pixels
    np.testing.assert_array_equal(left[:, :11], frame[:, 9:])
    assert (left[:, 11:] == 128).all()
    down = apply_one("TranslateYRel", frame, 5.0, negative=True)  # -0.225 * 12 = -2.7 pixels
    assert (down[:2] == 128).all() and not (down[3:] == 128).all()
    right = apply_one("TranslateXRel", frame, 50 / 9, negative=True)  # -0.25 * 20 = -5 pixels
    np.testing.assert_allclose(right[:, 5:], frame[:, :15], atol=1)


def test_shear_x_shifts_rows_in_proportion_to_their_height():
    frame = random_clip(frames=1, height=12, width=20)[0]
    magnitude = 10.0 * (2 / 7) / 0.3  # shear factor 2/7
    sheared = apply_one("ShearX", frame, magnitude)
    for row in (3, 10):  # pixel centre (row + 0.5) * 2/7 is a whole number of pixels
        shift = round((row + 0.5) * 2 / 7)
        np.testing.assert_allclose(sheared[row, : 20 - shift], frame[row, shift:], atol=1)


def test_rotate_counter_clockwise_about_centre():
    size = 41
    # A bright blob right of the centre on the fill colour, so that only the blob weighs in its centroid.
    frame = np.full((size, size, 3), 128, dtype=np.uint8)
    centre, radius = size // 2, 14
    frame[centre - 1 : centre + 2, centre + radius - 1 : centre + radius + 2] = 255
    rotated = np.clip(apply_one("Rotate", frame, 10.0)[..., 0] - 128, 0, None)  # +30 degrees
    rows, columns = np.mgrid[:size, :size]
    blob_row, blob_column = (rows * rotated).sum() / rotated.sum(), (columns * rotated).sum() / rotated.sum()
    angle = math.radians(30)
    # Counter-clockwise on screen: the blob moves up (smaller row index).
    assert blob_row == pytest.approx(centre - radius * math.sin(angle), abs=0.1)
    assert blob_column == pytest.approx(centre + radius * math.cos(angle), abs=0.1)
    corner = apply_one("Rotate", np.zeros_like(frame), 10.0)[0, 0]
    assert tuple(corner) == GREY_FILL  # corners come from outside the frame


def test_rotating_a_disc_leaves_it_unchanged():
    size = 33
    y, x = np.mgrid[:size, :size] - size // 2
    disc = np.where(x**2 + y**2 <= 12**2, 200, 30).astype(np.uint8)
    frame = np.repeat(disc[..., None], 3, axis=2)
    rotated = apply_one("Rotate", frame, 7.0, negative=True)
    # Away from the pixelated rim, where bicubic resampling rings, the disc is exactly unchanged.
    inside = x**2 + y**2 <= 8**2
    assert (rotated[inside] == 200).all()


# Input types and sizes.


def test_pil_numpy_and_tensor_inputs_agree_and_keep_sizes():
    augment = VideoRandAugment(probability=1.0)
    clip = random_clip(frames=2, height=15, width=22)
    decisions = augment.sample_decisions(11)
    from_array = augment.apply(clip, decisions)
    from_pil = augment.apply(as_pil(clip), decisions)
    from_tensor = augment.apply(torch.from_numpy(clip), decisions)
    assert isinstance(from_array, np.ndarray) and from_array.dtype == np.uint8 and from_array.shape == clip.shape
    assert isinstance(from_pil, list) and all(image.size == (22, 15) for image in from_pil)
    assert isinstance(from_tensor, torch.Tensor) and from_tensor.dtype == torch.uint8
    np.testing.assert_array_equal(as_array(from_pil), from_array)
    np.testing.assert_array_equal(from_tensor.numpy(), from_array)


def test_empty_clip_and_bad_arrays():
    augment = VideoRandAugment()
    assert augment([], generator=0) == []
    assert augment(np.zeros((0, 4, 4, 3), dtype=np.uint8), generator=0).shape == (0, 4, 4, 3)
    with pytest.raises(ValueError):
        augment(np.zeros((2, 4, 4, 3), dtype=np.float32), generator=0)
    with pytest.raises(ValueError):
        augment(np.zeros((2, 3, 4, 4), dtype=np.uint8), generator=0)


def test_official_decisions_round_trip_through_the_dataclass():
    decisions = AugmentationDecisions(
        (OperationDecision("Invert", applied=False), operation_decision("TranslateXRel", 10.0))
    )
    clip = random_clip(frames=2)
    expected = np.stack([apply_one("TranslateXRel", frame, 10.0) for frame in clip])
    np.testing.assert_array_equal(VideoRandAugment().apply(clip, decisions), expected)
