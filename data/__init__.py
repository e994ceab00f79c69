"""Bytes at rest: Parquet batches, their schema, sampling and weighting, and the store."""
