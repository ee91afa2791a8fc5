"""Pre-trains the Banzhaf interaction estimator (HBI's teacher) on any corpus the training data
pipeline reads; see `python scripts/train_estimator.py --help` and the README."""

from hbi_transformers.cli.retrieval import estimator_main

if __name__ == "__main__":
    estimator_main()
