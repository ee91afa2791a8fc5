"""`hbi-convert`: convert an official HBI checkpoint, or an OpenAI CLIP checkpoint to start a fresh
HBI, into a transformers folder."""

import argparse

from ..models.hbi.configuration_hbi import TEMPORAL_MODULES
from ..models.hbi.convert_hbi_original_to_hf import convert_checkpoint
from ..training.recipes import RECIPES
from .loading import load_processor


def run(argv: list[str] | None = None):
    """Runs the command; returns the converted model."""
    parser = argparse.ArgumentParser(
        prog="hbi-convert",
        description=(
            "Convert an official HBI checkpoint (jpthu17/HBI; retrieval or video QA), or an OpenAI CLIP "
            "checkpoint to start a fresh HBI, into a transformers HBIModel (HBIForVideoQuestionAnswering) folder."
        ),
    )
    parser.add_argument(
        "--checkpoint", required=True, help="full HBI state dict, or OpenAI CLIP file (e.g. ViT-B-32.pt)"
    )
    parser.add_argument("--output", required=True, help="folder to save the HBIModel to")
    parser.add_argument("--estimator", help="official Banzhaf estimator checkpoint, loaded into the teacher")
    parser.add_argument(
        "--answers", help="video QA checkpoint: its answer vocabulary (train_ans2label.json), which sets id2label"
    )
    parser.add_argument(
        "--recipe", choices=sorted(RECIPES),
        help="the published run the checkpoint comes from: saves a processor with its words, frames and "
             "sampling (needs --tokenizer), so that evaluating the folder needs no data flags",
    )
    parser.add_argument("--tokenizer", help="CLIP tokenizer folder, for the processor saved with --recipe")
    hyper = parser.add_argument_group(
        "HBI hyper-parameters",
        "Not stored in the weights; when left out, the official defaults of HBIConfig apply (for a video QA "
        "checkpoint, with the official QA settings of VIDEO_QA_SETTINGS).",
    )
    # Absent options stay out of the namespace, so that only what the user sets overrides the config.
    unset = argparse.SUPPRESS
    hyper.add_argument("--text-merge-ratios", type=float, nargs=2, metavar=("ACTION", "EVENT"), default=unset)
    hyper.add_argument("--video-merge-ratios", type=float, nargs=2, metavar=("ACTION", "EVENT"), default=unset)
    hyper.add_argument("--cluster-num-neighbors", type=int, default=unset)
    hyper.add_argument("--merge-attention-heads", type=int, default=unset)
    hyper.add_argument(
        "--level-weights", type=float, nargs=3, metavar=("ENTITY", "ACTION", "EVENT"), default=unset
    )
    hyper.add_argument("--banzhaf-kl-weight", type=float, default=unset)
    hyper.add_argument("--distillation-kl-weight", type=float, default=unset)
    hyper.add_argument(
        "--no-mask-entity-banzhaf-maps", dest="mask_entity_banzhaf_maps", action="store_false", default=unset
    )
    hyper.add_argument(
        "--temporal-module", choices=TEMPORAL_MODULES, default=unset, help="for a CLIP checkpoint only"
    )
    hyper.add_argument("--temporal-num-layers", type=int, default=unset, help="for a CLIP checkpoint only")
    hyper.add_argument(
        "--qa-level-weights", type=float, nargs=3, metavar=("ENTITY", "ACTION", "EVENT"), default=unset,
        help="video QA: weights of the levels' answer logits",
    )
    hyper.add_argument("--qa-distillation-kl-weight", type=float, default=unset, help="video QA: kl of the answer logits")
    args = vars(parser.parse_args(argv))
    checkpoint, output, estimator = args.pop("checkpoint"), args.pop("output"), args.pop("estimator")
    recipe, tokenizer = args.pop("recipe"), args.pop("tokenizer")
    if recipe is not None and tokenizer is None:
        parser.error("--recipe saves a processor, which needs the CLIP tokenizer: give --tokenizer")
    model = convert_checkpoint(checkpoint, output, estimator, report=print, answers=args.pop("answers"), **args)
    if recipe is not None:
        settings = RECIPES[recipe].values
        processor = load_processor(
            output, model.config.vision_config.image_size, tokenizer, max_words=settings["max_words"],
            max_frames=settings["max_frames"], video_framerate=settings["video_framerate"],
            frame_sampling=settings["frame_sampling"],
        )
        processor.save_pretrained(output)
        print(f"Saved the {recipe} processor: {settings['max_words']} words, {settings['max_frames']} frames, "
              f"{settings['frame_sampling']} sampling")
    return model


def main() -> None:
    run()


if __name__ == "__main__":
    main()
