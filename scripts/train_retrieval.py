"""Text-video retrieval: see `python scripts/train_retrieval.py --help` and the README."""

from hbi_transformers.cli.retrieval import train_main

if __name__ == "__main__":
    train_main()
