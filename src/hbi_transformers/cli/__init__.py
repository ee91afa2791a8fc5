"""The command lines: one module per console script (`run(argv)` returns the command's result to
Python callers; `main()` is the console entry point), and the loading layer they share."""
