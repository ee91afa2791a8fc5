"""`hbi-push`: publish a trained or converted HBI folder on the Hugging Face hub.

    hbi-push hbi-msrvtt --repo-id me/hbi-msrvtt --dry-run
    hbi-push hbi-msrvtt --repo-id me/hbi-msrvtt --metrics metrics.json \
        --dataset friedrichor/MSR-VTT --dataset-name "MSR-VTT 1k-A"

The upload folder is prepared first (`hbi_transformers.hub.publishing.prepare_hub_folder`): the
model's and processor's `save_pretrained` output (config with `auto_map`, safetensors weights,
processor and tokenizer files, the remote-code modules) plus the model card, checked complete.
With `--dry-run` it stops there and prints the folder. Otherwise the folder is uploaded as one
commit: the same files `model.push_to_hub` and `processor.push_to_hub` would send (both are
`save_pretrained` output), in one commit instead of three, and with this card, where
`push_to_hub` would write a default card into a repository that has none.
"""

import argparse
import tempfile
from pathlib import Path

from ..hub.publishing import prepare_hub_folder
from ..models.hbi import HBIModel
from .loading import load_processor

DESCRIPTION = (
    "Publish a trained or converted HBI folder on the Hugging Face hub: prepare the upload folder (model,"
    " processor, remote code, model card), check it is complete, and upload it in one commit (or, with "
    "--dry-run, stop and print it)."
)


def run(argv: list[str] | None = None) -> Path:
    """Runs the command; returns the prepared folder."""
    parser = argparse.ArgumentParser(
        prog="hbi-push", description=DESCRIPTION, epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model_dir", help="trained or converted HBI folder")
    parser.add_argument("--repo-id", required=True, help="hub repository, e.g. me/hbi-msrvtt")
    parser.add_argument("--output", help="where to prepare the upload (default: a new temporary folder)")
    parser.add_argument("--tokenizer", help="CLIP tokenizer, for a folder saved without its processor")
    parser.add_argument("--metrics", help="evaluation JSON for the card (default: MODEL_DIR/eval_results.json)")
    parser.add_argument("--dataset", action="append", default=[], help="hub dataset id (repeatable); the first is "
                        "the evaluation set")
    parser.add_argument("--dataset-name", help="readable name of the evaluation set")
    parser.add_argument("--base-model", default="openai/clip-vit-base-patch32")
    parser.add_argument("--license", default="mit")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="prepare and print the folder, upload nothing")
    args = parser.parse_args(argv)

    model = HBIModel.from_pretrained(args.model_dir)
    # A conversion has no processor: the official video settings with the given tokenizer.
    processor = load_processor(args.model_dir, model.config.vision_config.image_size, args.tokenizer)
    folder = prepare_hub_folder(
        model,
        processor,
        args.model_dir,
        args.output or tempfile.mkdtemp(prefix="hbi-hub-"),
        card_metrics=args.metrics,
        repo_id=args.repo_id,
        datasets=args.dataset,
        dataset_name=args.dataset_name,
        base_model=args.base_model,
        license=args.license,
    )
    print(f"upload folder: {folder}")
    for path in sorted(folder.iterdir()):
        print(f"  {path.name:32} {path.stat().st_size:>12,d} bytes")
    if args.dry_run:
        return folder

    from huggingface_hub import HfApi

    api = HfApi()
    repo_id = api.create_repo(args.repo_id, private=args.private, exist_ok=True).repo_id
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload HBI model, processor and card")
    print(f"pushed to https://huggingface.co/{repo_id}")
    return folder


def main() -> None:
    run()


if __name__ == "__main__":
    main()
