#!/usr/bin/env python
"""Converts an official HBI checkpoint (jpthu17/HBI), or an OpenAI CLIP checkpoint to start a fresh
HBI, into a transformers HBIModel folder; the same as the `hbi-convert` console script.

    python scripts/convert_original_checkpoint.py --checkpoint pytorch_model.bin.4 --output hbi-msrvtt
    python scripts/convert_original_checkpoint.py --checkpoint ViT-B-32.pt --estimator estimator.bin \
        --output hbi-from-clip
"""

from hbi_transformers.models.hbi.convert_hbi_original_to_hf import main

if __name__ == "__main__":
    main()
