"""`hbi-push`: publish a trained or converted HBI folder on the Hugging Face hub.

    hbi-push hbi-demo --repo-id me/hbi-demo --dry-run
    hbi-push hbi-msrvtt --repo-id me/hbi-msrvtt --metrics hbi-msrvtt/eval_results.json
    hbi-push converted --repo-id me/hbi-msrvtt-vit-b-32 --card model_cards/hbi-msrvtt-vit-b-32.md --tokenizer clip-tokenizer

The upload folder is prepared first (`hbi_transformers.hub.publishing.prepare_hub_folder`): the
model's and processor's `save_pretrained` output (config with `auto_map`, safetensors weights,
processor and tokenizer files, the remote-code modules), the example clip the card's snippet runs
on, and the model card, checked complete. The folder's own card (hbi-train and hbi-demo write
one) is kept: its snippet is pointed at the repository, and --metrics files (any our commands
write: eval_results.json, metrics.json, hbi-evaluate's --output_json, history.json) replace its
figures. A folder without a card gets a new one from the metrics files in it. With --dry-run it
stops there and prints the folder. Otherwise the folder is uploaded as one commit: the same files
`model.push_to_hub` and `processor.push_to_hub` send (both are `save_pretrained` output), in one
commit instead of two.
"""

import argparse
import tempfile
from pathlib import Path

from ..hub.publishing import prepare_hub_folder
from ..models.hbi import HBIConfig, HBIForVideoQuestionAnswering, HBIModel
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
    parser.add_argument("model_dir", help="trained or converted HBI folder (retrieval or video QA)")
    parser.add_argument("--repo-id", required=True, help="hub repository, e.g. me/hbi-msrvtt")
    parser.add_argument("--output", help="where to prepare the upload (default: a new temporary folder)")
    parser.add_argument("--tokenizer", help="CLIP tokenizer, for a folder saved without its processor")
    parser.add_argument("--metrics", action="append", help="metrics file of one of our commands for the card "
                        "(repeatable); default: the card's own figures, or for a folder without a card the "
                        "metrics files in it (eval_results.json, metrics.json, history.json)")
    parser.add_argument("--card", help="model card to start from instead of MODEL_DIR/README.md, e.g. "
                        "model_cards/hbi-msrvtt-vit-b-32.md for a conversion of the official checkpoint")
    parser.add_argument("--dataset", action="append", default=[], help="hub dataset id (repeatable); the first is "
                        "the evaluation set")
    parser.add_argument("--dataset-name", help="readable name of the evaluation set")
    origin = parser.add_mutually_exclusive_group()
    origin.add_argument("--base-model", help="hub id of the checkpoint the weights were fine-tuned or converted from "
                        "(e.g. openai/clip-vit-base-patch32); default: what the folder's card says, else none")
    origin.add_argument("--from-scratch", action="store_true", help="the model was trained from random weights: a new "
                        "card says so, a kept card loses its base_model")
    parser.add_argument("--license", help="license id; default: the card's, else mit")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="prepare and print the folder, upload nothing")
    args = parser.parse_args(argv)

    config = HBIConfig.from_pretrained(args.model_dir)
    is_video_qa = HBIForVideoQuestionAnswering.__name__ in (config.architectures or [])
    model = (HBIForVideoQuestionAnswering if is_video_qa else HBIModel).from_pretrained(args.model_dir)
    # A conversion has no processor: the official video settings with the given tokenizer.
    processor = load_processor(args.model_dir, model.config.vision_config.image_size, args.tokenizer)
    folder = prepare_hub_folder(
        model,
        processor,
        args.model_dir,
        args.output or tempfile.mkdtemp(prefix="hbi-hub-"),
        card_metrics=args.metrics,
        card=args.card,
        repo_id=args.repo_id,
        datasets=args.dataset,
        dataset_name=args.dataset_name,
        base_model=args.base_model,
        from_scratch=args.from_scratch,
        license=args.license,
    )
    kept = args.card or (Path(args.model_dir, "README.md").is_file() and "the folder's")
    print(f"upload folder: {folder} (model card: {f'{kept}, updated' if kept else 'new'})")
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
