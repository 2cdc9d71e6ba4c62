"""Parquet -> features -> batches.

Data flow: raw parquet (built-in data sets in :mod:`features.datasets`, or user files described by a schema YAML)
-> :mod:`features.schema` validation -> :mod:`features.processor` fit/transform -> processed parquet ->
:mod:`features.loader` per-rank batches (:class:`features.batch.RankBatch`).
"""
