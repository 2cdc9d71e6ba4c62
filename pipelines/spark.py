"""Scoring a Spark DataFrame with the pyfunc model, for data beyond one machine (``mlflow.pyfunc.spark_udf``).

::

    from pipelines.spark import local_session, score_dataframe
    spark = local_session()                                   # or the cluster's session
    scored = score_dataframe(spark.read.parquet("new/"), "models:/ranker@champion")
    scored.write.parquet("scores/")                           # every input column + score_<task>

The scores equal ``ranker score``'s for the same rows (tests/pipelines/test_spark.py). Unlike ``ranker score``, each
batch goes through pyfunc's input check, which costs about 17x the model on list columns (docs/scoring.md): Spark is
for scale-out, not for speed per core. The alias is resolved once, when the UDF is built.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def local_session(cores: int = 2) -> Any:
    """A ``local[cores]`` SparkSession bound to 127.0.0.1 without the web UI, its Python workers on this venv."""
    from pyspark.sql import SparkSession

    # The UDF runs in the workers' interpreter, which needs torch, the project and mlflow: this one.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return (
        SparkSession.builder.master(f"local[{cores}]")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .getOrCreate()
    )


def score_dataframe(df: Any, model_uri: str) -> Any:
    """``df`` with one ``score_<task>`` column per task of the pyfunc model ``model_uri``.

    A null list (array) cell is passed to the model as an empty list: pyfunc's input check fails the whole job on
    a null array, and the feature transform maps an empty list and a null one alike (to the missing id), so the
    scores are those of the null. The input columns themselves are left as they are.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType

    from pipelines import tracking

    udf, inputs = tracking.spark_udf(df.sparkSession, model_uri)
    missing = [c for c in inputs if c not in df.columns]
    if missing:
        raise ValueError(f"DataFrame: missing column(s) {missing}; the model reads {inputs}")
    args = [
        F.coalesce(F.col(c), F.array().cast(df.schema[c].dataType))
        if isinstance(df.schema[c].dataType, ArrayType)
        else F.col(c)
        for c in inputs
    ]
    scored = df.withColumn("__scores", udf(*args))
    return scored.select("*", "__scores.*").drop("__scores")
