"""Text-video retrieval: see `python scripts/evaluate_retrieval.py --help` and the README."""

from hbi_transformers.cli.retrieval import evaluate_main

if __name__ == "__main__":
    evaluate_main()
