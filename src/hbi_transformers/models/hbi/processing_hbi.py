"""HBI's processor: captions and videos -> the tensors `HBIModel.forward` takes. `HBIProcessor`
pairs the CLIP tokenizer (with the official text layout, docs/video_input.md) with
[`HBIVideoProcessor`]."""

import html
import re

import ftfy
from transformers import BatchFeature, ProcessorMixin
from transformers.processing_utils import ProcessingKwargs, TextKwargs, Unpack
from transformers.tokenization_utils_base import PaddingStrategy, TruncationStrategy

from .video_processing_hbi import HBIVideoProcessor, HBIVideoProcessorKwargs


class HBIProcessorKwargs(ProcessingKwargs, total=False):
    videos_kwargs: HBIVideoProcessorKwargs


# What a call takes: text and video options, flat or grouped, and the augmentation's generator.
_CALL_OPTIONS = {*TextKwargs.__annotations__, *HBIVideoProcessorKwargs.__annotations__, "text_kwargs",
                 "videos_kwargs", "common_kwargs", "generator"}
# Text options the official layout has a meaning for; any other tokenizer option is refused when set.
_LAYOUT_OPTIONS = ("padding", "truncation", "max_length", "pad_to_multiple_of", "padding_side",
                   "return_attention_mask", "add_special_tokens", "verbose")


def clean_caption(text: str) -> str:
    """The official CLIP text cleaning: fix mojibake (ftfy), unescape HTML twice, collapse
    whitespace. Lower-casing is the tokenizer's."""
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return re.sub(r"\s+", " ", text).strip()


class HBIProcessor(ProcessorMixin):
    r"""
    A CLIP tokenizer and an [`HBIVideoProcessor`] in one: `processor(text=..., videos=...,
    return_tensors="pt")` gives `input_ids`, `attention_mask`, `pixel_values_videos` and
    `video_mask`, the keyword arguments of `HBIModel.forward`.

    Text follows the official layout: `[SOT] + tokens[: max_words - 2] + [EOT]`, padded with id 0
    and mask 0 to `max_words`. The call takes transformers' standard options: text ones (`padding`,
    `truncation`, `max_length`, ...; `max_words` is accepted as another name of `max_length`),
    video ones (see [`HBIVideoProcessor`]), flat or grouped as `text_kwargs` / `videos_kwargs` /
    `common_kwargs`.

    Args:
        video_processor ([`HBIVideoProcessor`]): the video side.
        tokenizer ([`CLIPTokenizer`]): the text side.
        max_words (`int`, defaults to 24): tokens per caption, start and end tokens included (the
            default `max_length`).
    """

    valid_processor_kwargs = HBIProcessorKwargs

    def __init__(self, video_processor: HBIVideoProcessor | None = None, tokenizer=None, max_words: int = 24, **kwargs):
        self.max_words = max_words
        super().__init__(video_processor, tokenizer, **kwargs)

    @property
    def text_kwargs(self) -> dict:
        """The official layout as the processor's text defaults (lowest priority in `_merge_kwargs`)."""
        return {"padding": "max_length", "truncation": True, "max_length": self.max_words}

    def __call__(self, text: str | list[str] | None = None, videos=None, **kwargs: Unpack[HBIProcessorKwargs]):
        if text is None and videos is None:
            raise ValueError("HBIProcessor needs text, videos or both")
        kwargs = _max_words_as_max_length(kwargs)
        unknown = sorted(set(kwargs) - _CALL_OPTIONS)
        if unknown:
            raise ValueError(f"HBIProcessor got unexpected arguments: {unknown}")
        generator = kwargs.pop("generator", None)
        output_kwargs = self._merge_kwargs(
            HBIProcessorKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs if self.tokenizer else {}, **kwargs
        )
        text_kwargs, videos_kwargs = output_kwargs["text_kwargs"], output_kwargs["videos_kwargs"]
        return_tensors = text_kwargs.pop("return_tensors", None) or videos_kwargs.get("return_tensors")
        features = {}
        if text is not None:
            features.update(self.tokenize(text, **text_kwargs))
        if videos is not None:
            features.update(self.video_processor(videos, generator=generator, **videos_kwargs))
        metadata = features.pop("video_metadata", None)
        batch = BatchFeature(data=features, tensor_type=return_tensors)
        if metadata is not None:
            batch["video_metadata"] = metadata
        return batch

    def tokenize(
        self,
        text: str | list[str],
        padding: bool | str | PaddingStrategy = "max_length",
        truncation: bool | str | TruncationStrategy = True,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_attention_mask: bool | None = None,
        add_special_tokens: bool = True,
        verbose: bool = True,
        **unsupported,
    ) -> dict[str, list[list[int]]]:
        """Token ids in the official layout (docs/video_input.md#text), as lists. Padding uses id 0;
        truncation keeps the end token."""
        refused = sorted(name for name, value in unsupported.items() if value not in (None, False))
        if refused:
            raise ValueError(f"HBIProcessor's text layout does not support {refused} (it supports {list(_LAYOUT_OPTIONS)})")
        max_length = max_length if max_length is not None else self.max_words
        padding = _padding_strategy(padding)
        truncate = _truncates(truncation)
        special = 2 if add_special_tokens else 0
        if truncate and max_length < special + 1:
            raise ValueError(f"max_length (max_words) must leave room for a token between the start and end tokens, "
                             f"got {max_length}")
        padding_side = padding_side or "right"
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")

        captions = [text] if isinstance(text, str) else list(text)
        if not captions:
            raise ValueError("text holds no caption")
        sequences = []
        for index, caption in enumerate(captions):
            if not isinstance(caption, str):
                raise ValueError(f"caption {index} is a {type(caption).__name__}, not a string")
            cleaned = clean_caption(caption)
            if not cleaned:
                raise ValueError(f"caption {index} is empty")
            tokens = self.tokenizer(cleaned, add_special_tokens=False).input_ids
            if truncate:
                tokens = tokens[: max_length - special]
            if add_special_tokens:
                tokens = [self.tokenizer.bos_token_id, *tokens, self.tokenizer.eos_token_id]
            sequences.append(tokens)

        if padding == PaddingStrategy.MAX_LENGTH:
            length = max(max_length, *map(len, sequences))
        elif padding == PaddingStrategy.LONGEST:
            length = max(map(len, sequences))
        else:
            length = None
        if length is not None and pad_to_multiple_of:
            length = -(-length // pad_to_multiple_of) * pad_to_multiple_of

        input_ids, attention_mask = [], []
        for ids in sequences:
            # Id 0 whatever the tokenizer's pad token (docs/video_input.md#quirk-padding-with-id-0).
            pad = (length or len(ids)) - len(ids)
            before, after = (pad, 0) if padding_side == "left" else (0, pad)
            input_ids.append([0] * before + ids + [0] * after)
            attention_mask.append([0] * before + [1] * len(ids) + [0] * after)
        features = {"input_ids": input_ids}
        if return_attention_mask is not False:
            features["attention_mask"] = attention_mask
        return features

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        # Saving the remote code sets `auto_map` on the processor for its processor_config.json; a
        # processor loaded back has none, so the saved one drops it again and both stay equal.
        had_auto_map = "auto_map" in self.__dict__
        try:
            return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        finally:
            if not had_auto_map:
                self.__dict__.pop("auto_map", None)

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "pixel_values_videos", "video_mask"]


def _padding_strategy(padding: bool | str | PaddingStrategy) -> PaddingStrategy:
    if isinstance(padding, bool):
        return PaddingStrategy.LONGEST if padding else PaddingStrategy.DO_NOT_PAD
    return PaddingStrategy(padding)


def _truncates(truncation: bool | str | TruncationStrategy | None) -> bool:
    if truncation is None or isinstance(truncation, bool):
        return bool(truncation)
    return TruncationStrategy(truncation) != TruncationStrategy.DO_NOT_TRUNCATE


def _max_words_as_max_length(kwargs: dict) -> dict:
    """`max_words`, HBI's name for the caption length, is `max_length` at call time."""
    if "max_words" not in kwargs:
        return kwargs
    kwargs = dict(kwargs)
    max_words = kwargs.pop("max_words")
    if "max_length" in kwargs or "max_length" in kwargs.get("text_kwargs", {}):
        raise ValueError("max_words and max_length are the same option: pass one of them")
    kwargs["max_length"] = max_words
    return kwargs
