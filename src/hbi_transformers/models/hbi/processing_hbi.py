"""HBI's processor: captions and videos -> the tensors `HBIModel.forward` takes. `HBIProcessor`
pairs the CLIP tokenizer (with the official text layout, docs/video_input.md) with
[`HBIVideoProcessor`]."""

import html
import re

import ftfy
from transformers import BatchFeature, ProcessorMixin

from .video_processing_hbi import HBIVideoProcessor


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
    and mask 0 to `max_words`.

    Args:
        video_processor ([`HBIVideoProcessor`]): the video side.
        tokenizer ([`CLIPTokenizer`]): the text side.
        max_words (`int`, defaults to 24): tokens per caption, start and end tokens included.
    """

    def __init__(self, video_processor: HBIVideoProcessor | None = None, tokenizer=None, max_words: int = 24, **kwargs):
        self.max_words = max_words
        super().__init__(video_processor, tokenizer, **kwargs)

    def __call__(self, text=None, videos=None, return_tensors=None, max_words=None, **video_kwargs):
        if text is None and videos is None:
            raise ValueError("HBIProcessor needs text, videos or both")
        features = {}
        if text is not None:
            features.update(self.tokenize(text, max_words=max_words))
        if videos is not None:
            features.update(self.video_processor(videos, return_tensors=return_tensors, **video_kwargs))
        metadata = features.pop("video_metadata", None)
        batch = BatchFeature(data=features, tensor_type=return_tensors)
        if metadata is not None:
            batch["video_metadata"] = metadata
        return batch

    def tokenize(self, text, max_words: int | None = None) -> dict[str, list[list[int]]]:
        max_words = max_words or self.max_words
        if max_words < 3:
            raise ValueError(f"max_words must leave room for a token between the start and end tokens, got {max_words}")
        captions = [text] if isinstance(text, str) else list(text)
        input_ids, attention_mask = [], []
        for index, caption in enumerate(captions):
            if not isinstance(caption, str):
                raise ValueError(f"caption {index} is a {type(caption).__name__}, not a string")
            cleaned = clean_caption(caption)
            if not cleaned:
                raise ValueError(f"caption {index} is empty")
            tokens = self.tokenizer(cleaned, add_special_tokens=False).input_ids[: max_words - 2]
            ids = [self.tokenizer.bos_token_id, *tokens, self.tokenizer.eos_token_id]
            padding = max_words - len(ids)
            input_ids.append(ids + [0] * padding)
            attention_mask.append([1] * len(ids) + [0] * padding)
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "pixel_values_videos", "video_mask"]
