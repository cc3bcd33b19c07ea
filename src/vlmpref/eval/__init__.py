"""Stage 5 of the pipeline: metrics on held-out data (preference, answer accuracy), with 95% intervals."""
