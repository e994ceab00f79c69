"""Model building, the training loop, evaluation, update pipeline, sweeps, streams and the CLI."""
