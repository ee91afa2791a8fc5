"""Text-video retrieval: see `python scripts/train_retrieval.py --help` and the README."""

from hbi_transformers.retrieval_cli import train_main

if __name__ == "__main__":
    train_main()
