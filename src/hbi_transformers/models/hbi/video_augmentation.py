"""Video RandAugment as HBI trains MSR-VTT retrieval with it ("rand-m7-n4-mstd0.5-inc1").

The augmentation works on the decoded RGB frames of one clip, before the resize, centre crop and
normalisation. Every random decision (which operations, whether each one applies, its magnitude and
its sign) is drawn once per clip and applied identically to every frame, so that the clip stays
temporally consistent. Operations whose effect depends on the image content (AutoContrast,
Equalize) still compute their statistics frame by frame.

Each of the `num_ops` operations is drawn uniformly, with replacement, from a set of 15; each then
applies with probability `probability` at a magnitude drawn from N(magnitude, magnitude_std) and
clipped to [0, 10]. The "increasing" set (`inc1`) only holds operations whose strength grows with
the magnitude. Geometric operations fill uncovered pixels with mid grey and resample bicubically,
the settings HBI's dataloader passes.
"""

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

MAX_MAGNITUDE = 10.0
MAX_ROTATION_DEGREES = 30.0
MAX_SHEAR_FACTOR = 0.3
MAX_TRANSLATE_FRACTION = 0.45  # of the frame's width (TranslateXRel) or height (TranslateYRel)
MAX_SOLARIZE_ADDITION = 110
SOLARIZE_ADD_THRESHOLD = 128
GREY_FILL = (128, 128, 128)

Argument = float | int | None
Frames = TypeVar("Frames", list[Image.Image], np.ndarray, torch.Tensor)
DecisionGenerator = random.Random | np.random.Generator | torch.Generator | int | None


# Colour operations: (frame, argument) -> frame.


def _auto_contrast(image: Image.Image, _: None) -> Image.Image:
    return ImageOps.autocontrast(image)


def _equalize(image: Image.Image, _: None) -> Image.Image:
    return ImageOps.equalize(image)


def _invert(image: Image.Image, _: None) -> Image.Image:
    return ImageOps.invert(image)


def _posterize(image: Image.Image, bits_kept: int) -> Image.Image:
    """Keeps the `bits_kept` most significant bits of every value. Zero bits (the strongest
    increasing posterize) blacks the frame out, as the older Pillow HBI ran on did; recent Pillow's
    ImageOps.posterize refuses 0, hence the explicit table."""
    mask = (0xFF << (8 - bits_kept)) & 0xFF
    return image.point([value & mask for value in range(256)] * len(image.getbands()))


def _solarize(image: Image.Image, threshold: int) -> Image.Image:
    """Inverts the values at or above `threshold` (256: none)."""
    return ImageOps.solarize(image, threshold)


def _solarize_add(image: Image.Image, addition: int) -> Image.Image:
    """Brightens the values below 128 by `addition`, saturating at 255."""
    table = [min(255, value + addition) if value < SOLARIZE_ADD_THRESHOLD else value for value in range(256)]
    return image.point(table * len(image.getbands()))


def _color(image: Image.Image, factor: float) -> Image.Image:
    return ImageEnhance.Color(image).enhance(factor)


def _contrast(image: Image.Image, factor: float) -> Image.Image:
    return ImageEnhance.Contrast(image).enhance(factor)


def _brightness(image: Image.Image, factor: float) -> Image.Image:
    return ImageEnhance.Brightness(image).enhance(factor)


def _sharpness(image: Image.Image, factor: float) -> Image.Image:
    return ImageEnhance.Sharpness(image).enhance(factor)


# Geometric operations: (frame, argument, fill, resample) -> frame of the same size.


def _affine(image: Image.Image, coefficients: tuple, fill: tuple, resample: Image.Resampling) -> Image.Image:
    """Output pixel (x, y) takes the input at (a x + b y + c, d x + e y + f), pixel centres included."""
    return image.transform(image.size, Image.Transform.AFFINE, coefficients, resample=resample, fillcolor=fill)


def _rotate(image: Image.Image, degrees: float, fill: tuple, resample: Image.Resampling) -> Image.Image:
    """Counter-clockwise about the frame centre, keeping the frame size."""
    return image.rotate(degrees, resample=resample, fillcolor=fill)


def _shear_x(image: Image.Image, factor: float, fill: tuple, resample: Image.Resampling) -> Image.Image:
    return _affine(image, (1, factor, 0, 0, 1, 0), fill, resample)


def _shear_y(image: Image.Image, factor: float, fill: tuple, resample: Image.Resampling) -> Image.Image:
    return _affine(image, (1, 0, 0, factor, 1, 0), fill, resample)


def _translate_x(image: Image.Image, width_fraction: float, fill: tuple, resample: Image.Resampling) -> Image.Image:
    """A positive fraction moves the content left."""
    return _affine(image, (1, 0, width_fraction * image.width, 0, 1, 0), fill, resample)


def _translate_y(image: Image.Image, height_fraction: float, fill: tuple, resample: Image.Resampling) -> Image.Image:
    """A positive fraction moves the content up."""
    return _affine(image, (1, 0, 0, 0, 1, height_fraction * image.height), fill, resample)


@dataclass(frozen=True)
class _Operation:
    transform: Callable[..., Image.Image]
    # Maps level = magnitude / 10 (negated first when `random_sign`) to the transform's argument.
    argument_rule: Callable[[float], Argument] = lambda level: None
    random_sign: bool = False
    geometric: bool = False


def _increasing_enhancement(level: float) -> float:
    # Factor 1 leaves the frame unchanged; the signed level moves it towards 0.1 or 1.9.
    return 1.0 + 0.9 * level


def _standard_enhancement(level: float) -> float:
    # From 0.1 (strong reduction) at level 0 to 1.9 at level 1: not monotonic in strength.
    return 1.8 * level + 0.1


# Names as in timm's RandAugment, which the official HBI code uses.
OPERATIONS: dict[str, _Operation] = {
    "AutoContrast": _Operation(_auto_contrast),
    "Equalize": _Operation(_equalize),
    "Invert": _Operation(_invert),
    "Rotate": _Operation(_rotate, lambda level: MAX_ROTATION_DEGREES * level, random_sign=True, geometric=True),
    "Posterize": _Operation(_posterize, lambda level: int(4 * level)),
    "PosterizeIncreasing": _Operation(_posterize, lambda level: 4 - int(4 * level)),
    "Solarize": _Operation(_solarize, lambda level: int(256 * level)),
    "SolarizeIncreasing": _Operation(_solarize, lambda level: 256 - int(256 * level)),
    "SolarizeAdd": _Operation(_solarize_add, lambda level: int(MAX_SOLARIZE_ADDITION * level)),
    "Color": _Operation(_color, _standard_enhancement),
    "ColorIncreasing": _Operation(_color, _increasing_enhancement, random_sign=True),
    "Contrast": _Operation(_contrast, _standard_enhancement),
    "ContrastIncreasing": _Operation(_contrast, _increasing_enhancement, random_sign=True),
    "Brightness": _Operation(_brightness, _standard_enhancement),
    "BrightnessIncreasing": _Operation(_brightness, _increasing_enhancement, random_sign=True),
    "Sharpness": _Operation(_sharpness, _standard_enhancement),
    "SharpnessIncreasing": _Operation(_sharpness, _increasing_enhancement, random_sign=True),
    "ShearX": _Operation(_shear_x, lambda level: MAX_SHEAR_FACTOR * level, random_sign=True, geometric=True),
    "ShearY": _Operation(_shear_y, lambda level: MAX_SHEAR_FACTOR * level, random_sign=True, geometric=True),
    "TranslateXRel": _Operation(
        _translate_x, lambda level: MAX_TRANSLATE_FRACTION * level, random_sign=True, geometric=True
    ),
    "TranslateYRel": _Operation(
        _translate_y, lambda level: MAX_TRANSLATE_FRACTION * level, random_sign=True, geometric=True
    ),
}

# timm's two RandAugment sets, in its order. They differ in the colour operations only: in the
# "increasing" one a larger magnitude always means a stronger change.
STANDARD_OPERATIONS = (
    "AutoContrast", "Equalize", "Invert", "Rotate",
    "Posterize", "Solarize", "SolarizeAdd", "Color", "Contrast", "Brightness", "Sharpness",
    "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)  # fmt: skip
INCREASING_OPERATIONS = (
    "AutoContrast", "Equalize", "Invert", "Rotate",
    "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing",
    "BrightnessIncreasing", "SharpnessIncreasing",
    "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)  # fmt: skip


@dataclass(frozen=True)
class OperationDecision:
    """One drawn operation of a clip. `magnitude` (after clipping) and `argument` (what the transform
    receives, sign included) are None when the operation was drawn but does not apply."""

    name: str
    applied: bool
    magnitude: float | None = None
    argument: Argument = None


@dataclass(frozen=True)
class AugmentationDecisions:
    """Every random decision for one clip, in the order the operations run."""

    operations: tuple[OperationDecision, ...]


def operation_decision(name: str, magnitude: float, negative: bool = False) -> OperationDecision:
    """The applied decision for operation `name` at `magnitude` in [0, 10]. `negative` flips the sign
    of operations drawn with a random sign (rotations, shears, translations, increasing enhancements)
    and is ignored by the others."""
    if name not in OPERATIONS:
        raise ValueError(f"unknown operation {name!r}; known: {sorted(OPERATIONS)}")
    if not 0.0 <= magnitude <= MAX_MAGNITUDE:
        raise ValueError(f"magnitude must lie in [0, {MAX_MAGNITUDE}], got {magnitude}")
    operation = OPERATIONS[name]
    level = magnitude / MAX_MAGNITUDE
    if operation.random_sign and negative:
        level = -level
    return OperationDecision(name, True, magnitude, operation.argument_rule(level))


def _decision_rng(generator: DecisionGenerator) -> random.Random:
    """A `random.Random` for one clip's draws. Other generators give it a seed from one draw of
    their own, so they advance reproducibly; None draws that seed from torch's global generator,
    which DataLoader reseeds in every worker."""
    if isinstance(generator, random.Random):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        return random.Random(generator)
    if isinstance(generator, np.random.Generator):
        return random.Random(int(generator.integers(2**63 - 1)))
    if isinstance(generator, torch.Generator):
        return random.Random(int(torch.randint(2**63 - 1, (1,), generator=generator, device=generator.device)))
    if generator is None:
        return random.Random(int(torch.randint(2**63 - 1, (1,))))
    raise TypeError(
        "generator must be a random.Random, numpy.random.Generator, torch.Generator, int seed or None, "
        f"got {type(generator).__name__}"
    )


class VideoRandAugment:
    """RandAugment for a clip, with the same random decisions for all of its frames.

    Call it on a list of RGB PIL frames (the official path), or on a uint8 array or tensor shaped
    [frames, height, width, 3]; it returns the same type and sizes. The defaults are HBI's
    "rand-m7-n4-mstd0.5-inc1".
    """

    def __init__(
        self,
        num_ops: int = 4,
        magnitude: float = 7.0,
        magnitude_std: float = 0.5,
        probability: float = 0.5,
        increasing: bool = True,
        fill: tuple[int, int, int] = GREY_FILL,
        resample: Image.Resampling = Image.Resampling.BICUBIC,
    ):
        if num_ops < 0:
            raise ValueError(f"num_ops must be >= 0, got {num_ops}")
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must lie in [0, 1], got {probability}")
        if magnitude_std < 0:
            raise ValueError(f"magnitude_std must be >= 0, got {magnitude_std}")
        self.num_ops = num_ops
        self.magnitude = float(magnitude)
        self.magnitude_std = float(magnitude_std)
        self.probability = probability
        self.increasing = increasing
        self.operation_names = INCREASING_OPERATIONS if increasing else STANDARD_OPERATIONS
        self.fill = tuple(fill)
        self.resample = resample

    @classmethod
    def from_config_string(cls, config: str, **kwargs) -> "VideoRandAugment":
        """Parses timm-style "rand-m7-n4-mstd0.5-inc1": `m` magnitude, `n` number of operations,
        `mstd` magnitude noise, `inc` 1 for the increasing set. Keys left out take timm's defaults
        (m10, n2, mstd0, inc0), not HBI's. `kwargs` go to the constructor (fill, resample,
        probability)."""
        sections = config.split("-")
        if sections[0] != "rand":
            raise ValueError(f"{config!r}: a RandAugment config starts with 'rand'")
        settings = dict(num_ops=2, magnitude=MAX_MAGNITUDE, magnitude_std=0.0, increasing=False)
        parsers = {
            "m": ("magnitude", float),
            "n": ("num_ops", int),
            "mstd": ("magnitude_std", float),
            "inc": ("increasing", lambda value: bool(int(value))),
        }
        for section in sections[1:]:
            key_value = re.fullmatch(r"([a-z]+)(\d.*)", section)
            if key_value is None or key_value.group(1) not in parsers:
                raise ValueError(
                    f"{config!r}: cannot read section {section!r}; expected a key among {sorted(parsers)} "
                    "followed by its number"
                )
            key, value = key_value.groups()
            setting, parse = parsers[key]
            try:
                settings[setting] = parse(value)
            except ValueError as error:
                raise ValueError(f"{config!r}: bad value {value!r} for {key!r}") from error
        return cls(**settings, **kwargs)

    def sample_decisions(self, generator: DecisionGenerator = None) -> AugmentationDecisions:
        """Draws the decisions for one clip: the operations (uniformly, with replacement), then for
        each one whether it applies and, if so, its magnitude and its sign."""
        rng = _decision_rng(generator)
        names = [rng.choice(self.operation_names) for _ in range(self.num_ops)]
        decisions = []
        for name in names:
            if rng.random() >= self.probability:
                decisions.append(OperationDecision(name, applied=False))
                continue
            magnitude = rng.gauss(self.magnitude, self.magnitude_std) if self.magnitude_std > 0 else self.magnitude
            magnitude = min(MAX_MAGNITUDE, max(0.0, magnitude))
            negative = OPERATIONS[name].random_sign and rng.random() < 0.5
            decisions.append(operation_decision(name, magnitude, negative))
        return AugmentationDecisions(tuple(decisions))

    def apply(self, frames: Frames, decisions: AugmentationDecisions) -> Frames:
        """Applies the same decisions to every frame of the clip."""
        if isinstance(frames, torch.Tensor):
            augmented = self.apply(frames.detach().cpu().numpy(), decisions)
            return torch.from_numpy(augmented).to(frames.device)
        if isinstance(frames, np.ndarray):
            if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
                raise ValueError(
                    f"expected uint8 RGB frames shaped [frames, height, width, 3], got {frames.dtype} {frames.shape}"
                )
            if len(frames) == 0:
                return frames.copy()
            images = self.apply([Image.fromarray(frame) for frame in frames], decisions)
            return np.stack([np.asarray(image) for image in images])
        images = list(frames)
        for decision in decisions.operations:
            if decision.applied:
                images = [self._apply_operation(image, decision) for image in images]
        return images

    def __call__(self, frames: Frames, generator: DecisionGenerator = None) -> Frames:
        return self.apply(frames, self.sample_decisions(generator))

    def _apply_operation(self, image: Image.Image, decision: OperationDecision) -> Image.Image:
        operation = OPERATIONS[decision.name]
        if operation.geometric:
            return operation.transform(image, decision.argument, self.fill, self.resample)
        return operation.transform(image, decision.argument)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_ops={self.num_ops}, magnitude={self.magnitude}, "
            f"magnitude_std={self.magnitude_std}, probability={self.probability}, "
            f"increasing={self.increasing})"
        )
