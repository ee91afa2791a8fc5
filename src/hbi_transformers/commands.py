"""Console-script entry points. Each runs one command line and exits 0 when it succeeds: the
functions behind them return their results to Python callers, and `sys.exit` would take such a
return value for an error."""

from . import conversion, qa_cli, retrieval_cli, search, visualization


def _command(main):
    def run() -> None:
        main()

    run.__doc__ = main.__doc__
    return run


convert = _command(conversion.main)
train = _command(retrieval_cli.train_main)
evaluate = _command(retrieval_cli.evaluate_main)
train_estimator = _command(retrieval_cli.estimator_main)
visualize = _command(visualization.main)
train_qa = _command(qa_cli.main)
index = _command(search.index_main)
search_index = _command(search.search_main)
