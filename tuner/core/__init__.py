"""The core: the vocabulary of a run (config, registries), the data, SAM as a segmenter, the
losses and metrics, and `fit`. It knows nothing of Optuna, INC or the CLI."""
