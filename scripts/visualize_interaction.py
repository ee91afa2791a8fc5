"""Draws the word x frame Banzhaf interaction maps of a caption and a video, at the entity, action
and event levels, as one PNG; see `python scripts/visualize_interaction.py --help`."""

from hbi_transformers.apps.visualization import main

if __name__ == "__main__":
    main()
