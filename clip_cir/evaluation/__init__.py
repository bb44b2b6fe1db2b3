"""Rankings to numbers: the benchmarks' metrics, evaluation of a model on a split, test-server submissions."""
