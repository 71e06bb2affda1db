"""hsmkey's signing benchmark as a package: ``runner`` (the run and the command line),
``report`` (figures and tables), ``measure`` (timing loops), ``limit`` (the Rust loop),
``peers`` (other libraries in their own processes) and ``scenarios`` (one module per section).
``bench/bench_sign.py`` is the entry point."""
