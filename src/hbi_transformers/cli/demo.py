"""`hbi-demo`: the offline demonstration. Renders the synthetic shapes corpus, trains a small HBI
from scratch on the CPU, evaluates it before and after, and writes the model, its card, the
metrics and an interaction heatmap (see `hbi_transformers.apps.demo`)."""

from transformers import HfArgumentParser

from ..apps.demo import DemoSettings, run_demo
from .arguments import ParallelismArguments, configure_parallelism

DESCRIPTION = (
    "Offline demonstration, no GPU, hub or dataset needed: render the synthetic shapes corpus, pre-train a "
    "Banzhaf estimator and train a small HBI from scratch, evaluate the untrained and the trained model on the "
    "test split, and write the model, processor, model card, metrics and a Banzhaf interaction heatmap to "
    "--output_dir. `hbi-train` with no arguments runs it with these defaults."
)


def run(argv: list[str] | None = None) -> dict:
    """Runs the command; returns the demonstration's summary."""
    parser = HfArgumentParser((DemoSettings, ParallelismArguments), prog="hbi-demo", description=DESCRIPTION)
    settings, parallelism_args = parser.parse_args_into_dataclasses(args=argv)
    # Torch threads from the cores (one per two on a CPU): spinning threads on a shared machine
    # cost several times the CPU of the step.
    configure_parallelism(parallelism_args, argv)
    return run_demo(settings)


def main() -> None:
    run()


if __name__ == "__main__":
    main()
