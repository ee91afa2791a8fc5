"""Console-script entry points. Each runs one command line and exits 0 when it succeeds: the
functions behind them return their results to Python callers, and `sys.exit` would take such a
return value for an error."""

from ..models.hbi.convert_hbi_original_to_hf import main as convert_main
from .video_qa import main as qa_main
from .retrieval import estimator_main, evaluate_main, train_main
from ..apps.search import index_main, search_main
from ..apps.visualization import main as visualize_main


def _command(main):
    def run() -> None:
        main()

    run.__doc__ = main.__doc__
    return run


convert = _command(convert_main)
train = _command(train_main)
evaluate = _command(evaluate_main)
train_estimator = _command(estimator_main)
visualize = _command(visualize_main)
train_qa = _command(qa_main)
index = _command(index_main)
search_index = _command(search_main)
