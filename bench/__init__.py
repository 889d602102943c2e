"""closewait's benchmark suite: run it with bench/run (see README.md, "Benchmarks")."""
