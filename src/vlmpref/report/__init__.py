"""Stage 6 of the pipeline: before/after tables and reports."""
