"""transformers' own `ProcessorTesterMixin` applied to HBIProcessor (the suite is fetched from
transformers' source distribution)."""

import tempfile
import unittest

from conftest import tiny_clip_tokenizer
from transformers_suites import common_tests

from hbi_transformers import HBIProcessor, HBIVideoProcessor

ProcessorTesterMixin = common_tests("test_processing_common").ProcessorTesterMixin


class HBIProcessorTest(ProcessorTesterMixin, unittest.TestCase):
    processor_class = HBIProcessor

    @classmethod
    def _setup_tokenizer(cls):
        # The CLIP layout over a 4-merge BPE: CLIP's own vocabulary is not reachable offline.
        return tiny_clip_tokenizer(tempfile.mkdtemp())

    @classmethod
    def _setup_video_processor(cls):
        # 32-pixel frames keep the suite's 400-pixel-wide clips cheap; the steps are the same.
        return HBIVideoProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
