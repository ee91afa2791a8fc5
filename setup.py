from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="hbi-transformers",
    version="0.2.0",
    description=(
        "Hierarchical Banzhaf Interaction (HBI, CVPR 2023) for text-video retrieval "
        "as a Hugging Face transformers model"
    ),
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    package_dir={"": "src"},
    packages=find_packages("src"),
    package_data={
        "hbi_transformers.hub": ["templates/*.md"],
        "hbi_transformers.training.metrics": ["retrieval_metric/*.py"],
    },
    python_requires=">=3.10",
    # torch and torchvision are installed first, pinned (see README): a loose requirement here
    # would let pip pull a multi-GB CUDA build on machines where a matching one is already present.
    install_requires=[
        "torch>=2.11",  # the oldest with which the suite was run
        "torchvision",
        # 5.25 at least: HBIConfig builds its CLIP sub-configs through `sub_configs_defaults` and
        # HBIVideoProcessor merges its arguments as 5.25's video processors do (5.17, 5.21 and 5.24
        # fail the test suite).
        "transformers>=5.25,<6",
        "safetensors>=0.4",
        "pillow",
        "numpy",
        "tqdm",
        "ftfy",
        "datasets>=4.0",
        # 1.13 at least: the Trainer needs 1.1 to start, and 1.12 fails a batch of only bad videos.
        "accelerate>=1.13",
        # The search index: LanceDB tables (the Lance format, read through pylance).
        "lancedb==0.40.0",
        # Row checksums of the index, checked on every read (also a dependency of datasets).
        "xxhash>=3.0",
        "pylance==9.0.0",
    ],
    extras_require={
        # av 18: the tests write rotated clips (VideoStream.set_display_rotation).
        "test": ["pytest>=8", "evaluate==0.4.6", "matplotlib>=3.6", "parameterized>=0.9", "av>=18"],
        "visualization": ["matplotlib>=3.6"],
        "evaluate": ["evaluate==0.4.6"],
        # av 15: decoding reads each frame's display rotation (VideoFrame.rotation).
        "video": ["av>=15", "decord>=0.6; platform_machine == 'x86_64'"],
    },
    entry_points={
        "console_scripts": [
            "hbi-train=hbi_transformers.cli.train:main",
            "hbi-evaluate=hbi_transformers.cli.evaluate:main",
            "hbi-train-estimator=hbi_transformers.cli.train_estimator:main",
            "hbi-train-qa=hbi_transformers.cli.train_qa:main",
            "hbi-convert=hbi_transformers.cli.convert:main",
            "hbi-visualize=hbi_transformers.cli.visualize:main",
            "hbi-index=hbi_transformers.cli.index:main",
            "hbi-search=hbi_transformers.cli.search:main",
            "hbi-demo=hbi_transformers.cli.demo:main",
            "hbi-build-tokenizer=hbi_transformers.cli.build_tokenizer:main",
            "hbi-make-corpus=hbi_transformers.cli.make_corpus:main",
            "hbi-push=hbi_transformers.cli.push_to_hub:main",
            "hbi-prepare=hbi_transformers.cli.prepare:main",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
