"""Index a folder of videos for text search; the same as the `hbi-index` console script.

    python scripts/hbi_index.py my_videos/ --model hbi-msrvtt --output my_videos.index [--segment-seconds 10]
"""

from hbi_transformers.apps.search import index_main

if __name__ == "__main__":
    index_main()
