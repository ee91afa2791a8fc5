"""Video question answering (MSRVTT-QA): see `python scripts/train_video_qa.py --help` and the README."""

from hbi_transformers.cli.video_qa import main

if __name__ == "__main__":
    main()
