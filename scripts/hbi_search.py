"""Search an index of videos by text; the same as the `hbi-search` console script.

    python scripts/hbi_search.py my_videos.index "a man is cooking pasta" --top-k 10 [--json] [--candidates 1000]
"""

from hbi_transformers.apps.search import search_main

if __name__ == "__main__":
    search_main()
