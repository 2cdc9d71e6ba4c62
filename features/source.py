"""Raw tables -> checked, joined, labelled and split interactions: the ``source:`` part of a schema.

:func:`stage` reads the interactions and side tables with polars lazy scans, checks them where the user can fix
them (messages name the user's file, column and row), joins the side tables many-to-one, parses the timestamp,
derives columns from it, sets bad rows aside (``bad_rows: quarantine``, at most ``max_bad_share`` of the rows,
overall and of each split) and splits the good rows into ``out_dir/source/<split>.parquet``. It returns a schema in
the ``files:`` form over those files, which the feature processor then fits and transforms like any already-split
data, and a report for the manifest. Every row check (the image items table's included) runs here, on the user's
rows, so the processor's checks of the staged files find nothing. Row accounting: rows in = rows in the splits +
rows quarantined.

The joined interactions are held in memory while they are split (a split needs a global order or permutation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from features import images
from features.processor import label_expr
from features.schema import SPLITS, Derived, Join, Schema, Source, Timestamp
from features.validate import REASON_COLUMN, ROW_COLUMN, DataError, check_types, open_parquet, row_problem

FILE_COLUMN = "_file"
FILE_INDEX = "_file_index"
SPLIT_COLUMN = "_split"
TIME_COLUMN = "_time"
SOURCE_DIR = "source"
QUARANTINE_FILE = "quarantine/source.parquet"


@dataclass(frozen=True)
class _Table:
    """One table: its files, their polars schema (from the first file) and a label for messages."""

    files: list[Path]
    columns: pl.Schema
    label: str


def _open(schema: Schema, pattern: str, what: str) -> _Table:
    files = schema.matching(pattern, what)
    columns = [open_parquet(f) for f in files]
    for f, cols in zip(files[1:], columns[1:], strict=True):
        if list(cols) != list(columns[0]):
            raise DataError(f"{f}: columns {list(cols)} differ from those of {files[0]}: {list(columns[0])}")
        _check_same_types(f, cols, files[0], columns[0], list(cols))
    return _Table(files, columns[0], str(files[0]) if len(files) == 1 else str(schema.resolve(pattern)))


def _check_same_types(path: Path, cols: pl.Schema, first: Path, first_cols: pl.Schema, names: list[str]) -> None:
    """Stops when a column of ``names`` has another type in ``path`` than in ``first`` (the files are stacked)."""
    for c in names:
        if cols[c] != first_cols[c]:
            raise DataError(f"{path}: column {c!r} has type {cols[c]}, but {first_cols[c]} in {first}")


def _needed_columns(schema: Schema, source: Source) -> list[str]:
    """Raw columns the build reads (the derived ones excluded)."""
    extra = [source.timestamp.column] if source.timestamp else []
    extra += [d.since for d in source.derive if d.since] + ([source.split.by] if source.split.by else [])
    derived = {d.name for d in source.derive}
    return [c for c in dict.fromkeys(schema.feature_columns + extra) if c not in derived]


def _providers(needed: Sequence[str], interactions: _Table, sides: Sequence[tuple[Join, _Table]]) -> dict[str, int]:
    """Which table gives each needed column: -1 for the interactions, else the join's index (first one wins)."""
    tables = [(-1, interactions)] + [(i, t) for i, (_, t) in enumerate(sides)]
    where: dict[str, int] = {}
    for column in needed:
        found = [i for i, t in tables if column in t.columns]
        if not found:
            listing = "; ".join(f"{t.label} has {list(t.columns)}" for _, t in tables)
            raise DataError(f"column {column!r} is in none of the source tables: {listing}")
        where[column] = found[0]
    return where


def _scan(table: _Table, columns: list[str], first_index: int) -> pl.LazyFrame:
    """The table's files stacked, with the file, its index and the row within the file."""
    return pl.concat(
        [
            pl.scan_parquet(f)
            .select(columns)
            .with_row_index(ROW_COLUMN)
            .with_columns(pl.lit(str(f)).alias(FILE_COLUMN), pl.lit(first_index + i).alias(FILE_INDEX))
            for i, f in enumerate(table.files)
        ]
    )


def _side_frame(join: Join, table: _Table, columns: list[str], index: int) -> pl.LazyFrame:
    """The side table's key and provided columns, checked to hold one row per key."""
    if join.key not in table.columns:
        raise DataError(f"{table.label}: join key {join.key!r} is missing; the table has {list(table.columns)}")
    side = pl.concat(
        [
            pl.scan_parquet(f)
            .select([join.key, *columns])
            .with_row_index(f"_side_row_{index}")
            .with_columns(pl.lit(str(f)).alias(f"_side_file_{index}"))
            for f in table.files
        ]
    )
    repeated = side.group_by(join.key).agg(pl.len().alias("n")).filter(pl.col("n") > 1).sort(join.key).collect()
    if repeated.height:
        first = repeated.row(0, named=True)
        raise DataError(
            f"{table.label}: join key {join.key!r} is not unique: {repeated.height} value(s) appear more than once "
            f"(first {first[join.key]!r}, {first['n']} times); a side table needs one row per key, or the join "
            "would repeat interaction rows"
        )
    return side.with_columns(pl.lit(True).alias(f"_matched_{index}"))


def _time_expr(ts: Timestamp, dtype: pl.DataType, where: str) -> pl.Expr:
    """The timestamp as a naive UTC ``Datetime("us")``; null where the raw value is null or does not parse."""
    col = pl.col(ts.column)
    if dtype.is_integer():
        parsed = pl.from_epoch(col, time_unit=ts.unit)
    elif dtype == pl.Date:
        parsed = col.cast(pl.Datetime("us"))
    elif isinstance(dtype, pl.Datetime):
        parsed = col.dt.convert_time_zone("UTC").dt.replace_time_zone(None) if dtype.time_zone else col
    elif dtype == pl.String:
        if ts.format is None:
            raise DataError(f"{where}: column {ts.column!r} (timestamp) holds strings; give timestamp.format")
        parsed = col.str.to_datetime(ts.format, strict=False)
    else:
        expected = "an integer epoch, a date, a datetime or a string"
        raise DataError(f"{where}: column {ts.column!r} (timestamp) has type {dtype}; expected {expected}")
    return parsed.cast(pl.Datetime("us")).alias(TIME_COLUMN)


def _derived_expr(d: Derived) -> pl.Expr:
    time = pl.col(TIME_COLUMN)
    if d.part == "hour":
        return time.dt.hour().cast(pl.Int64).alias(d.name)
    if d.part == "weekday":
        return (time.dt.weekday() - 1).cast(pl.Int64).alias(d.name)
    assert d.since is not None, "age_years needs since"
    return (time.dt.year() - pl.col(d.since)).clip(lower_bound=0).cast(pl.Float64).alias(d.name)


def _source_problem(source: Source, sides: Sequence[tuple[Join, _Table]], where: dict[str, str]) -> pl.Expr:
    """Per row, the first problem of the source itself (timestamp, unmatched inner join) or null."""
    checks: list[tuple[pl.Expr, str]] = []
    if source.timestamp is not None:
        col, name = pl.col(source.timestamp.column), source.timestamp.column
        at = f" of {where[name]}" if name in where else ""
        checks.append((col.is_null(), f"column {name!r}{at} (timestamp): null"))
        how = f"with format {source.timestamp.format!r}" if source.timestamp.format else "as a time"
        checks.append((pl.col(TIME_COLUMN).is_null(), f"column {name!r}{at} (timestamp): unparsable {how}"))
    if source.split.by is not None:
        checks.append((pl.col(source.split.by).is_null(), f"column {source.split.by!r} (split by): null"))
    for i, (join, table) in enumerate(sides):
        if join.how == "inner":
            checks.append((pl.col(f"_matched_{i}").is_null(), f"column {join.key!r}: no match in {table.label}"))
    expr = pl.lit(None, dtype=pl.String)
    for cond, reason in reversed(checks):
        expr = pl.when(cond).then(pl.lit(reason)).otherwise(expr)
    return expr


def _problem_lines(bad: pl.DataFrame, side_columns: Sequence[dict[str, str]]) -> tuple[dict[str, int], list[str]]:
    """Counts per reason, and one message line per reason with its first row and file.

    ``side_columns[i]`` maps the columns that join ``i`` provides to their table: a reason about such a column
    also gives the side table's row (or says that no row matched).
    """
    sides = [i for i in range(len(side_columns)) if f"_side_row_{i}" in bad.columns]
    firsts = [pl.col(c).first() for i in sides for c in (f"_side_row_{i}", f"_side_file_{i}")]
    summary = (
        bad.sort([FILE_INDEX, ROW_COLUMN])
        .group_by(REASON_COLUMN, maintain_order=True)
        .agg(pl.len().alias("rows"), pl.col(FILE_COLUMN).first(), pl.col(ROW_COLUMN).first(), *firsts)
    )
    counts, lines = {}, []
    for r in summary.to_dicts():
        reason = r[REASON_COLUMN]
        counts[reason] = int(r["rows"])
        line = f"  {reason}: {r['rows']} row(s), first at row {r[ROW_COLUMN]} of {r[FILE_COLUMN]}"
        for i in sides:
            table = next((t for c, t in side_columns[i].items() if reason.startswith(f"column {c!r} of {t} ")), None)
            if table is not None and r[f"_side_row_{i}"] is None:
                line += f" (no row of {table} matches it)"
            elif table is not None:
                line += f" (row {r[f'_side_row_{i}']} of {r[f'_side_file_{i}']})"
        lines.append(line)
    return counts, lines


def _check_bad_rows(schema: Schema, joined: _Joined) -> dict[str, int]:
    """Stops on bad rows (``bad_rows: error``) or on too many of them (overall or per given split); returns counts."""
    flagged, label = joined.flagged, joined.label
    bad = flagged.filter(pl.col(REASON_COLUMN).is_not_null())
    counts, lines = _problem_lines(bad, joined.side_columns)
    if bad.height and schema.bad_rows == "error":
        raise DataError(
            f"{label}: {bad.height} bad row(s) of {flagged.height}\n" + "\n".join(lines) + "\n(set `bad_rows: "
            "quarantine` in the schema to set up to max_bad_share of the rows aside instead of stopping)"
        )
    groups = [("the source", flagged, bad)]
    if SPLIT_COLUMN in flagged.columns:
        for s in SPLITS:
            in_split = pl.col(SPLIT_COLUMN) == s
            groups.append((f"split {s!r}", flagged.filter(in_split), bad.filter(in_split)))
    for scope, rows, rejected in groups:
        if rows.height and rejected.height / rows.height > schema.max_bad_share:
            raise DataError(
                f"{label}: {rejected.height} of {rows.height} rows of {scope} ({rejected.height / rows.height:.1%}) "
                f"are bad, more than max_bad_share {schema.max_bad_share:.1%}; nothing was built\n"
                + "\n".join(_problem_lines(rejected, joined.side_columns)[1])
            )
    return counts


def _split_column(source: Source, good: pl.DataFrame, order: list[str]) -> pl.DataFrame:
    """``good`` with ``_split`` set, sorted by split then by ``order`` (temporal) or by file and row."""
    split = source.split
    n = good.height
    f_train, f_valid, _ = split.fractions
    cuts = np.array([int(n * f_train), int(n * (f_train + f_valid))])
    names = pl.Series(SPLITS)
    if split.kind == "temporal" and split.cutoffs:
        bounds = [_parse_cutoff(split.cutoffs[s]) for s in ("valid", "test")]
        good = good.sort(order).with_columns(_split_by_time(bounds))
    elif split.kind == "temporal":
        good = good.sort(order)
        good = good.with_columns(pl.Series(SPLIT_COLUMN, names.gather(np.searchsorted(cuts, np.arange(n), "right"))))
    elif split.kind == "random" and split.by is None:
        good = good.sort([FILE_INDEX, ROW_COLUMN])
        rank = np.empty(n, dtype=np.int64)
        rank[np.random.default_rng(split.seed).permutation(n)] = np.arange(n)
        good = good.with_columns(pl.Series(SPLIT_COLUMN, names.gather(np.searchsorted(cuts, rank, "right"))))
    elif split.kind == "random":
        keys = good.select(pl.col(split.by).unique().sort())
        g = keys.height
        rank = np.empty(g, dtype=np.int64)
        rank[np.random.default_rng(split.seed).permutation(g)] = np.arange(g)
        group_cuts = np.array([int(g * f_train), int(g * (f_train + f_valid))])
        keys = keys.with_columns(pl.Series(SPLIT_COLUMN, names.gather(np.searchsorted(group_cuts, rank, "right"))))
        good = good.sort([FILE_INDEX, ROW_COLUMN]).join(keys, on=split.by, how="left", maintain_order="left")
    else:  # given files: the split is known per file
        good = good.sort([FILE_INDEX, ROW_COLUMN])
    rank_of = {s: i for i, s in enumerate(SPLITS)}
    key = pl.col(SPLIT_COLUMN).replace_strict(rank_of, return_dtype=pl.Int8)
    return good.with_columns(key.alias("_split_rank")).sort("_split_rank", maintain_order=True).drop("_split_rank")


def _split_by_time(starts: list[Any]) -> pl.Expr:
    """The split of a row by its time, given the first times of valid and test (null where the time is null)."""
    time = pl.col(TIME_COLUMN)
    which = pl.when(time < starts[0]).then(pl.lit("train")).when(time < starts[1]).then(pl.lit("valid"))
    return pl.when(time.is_not_null()).then(which.otherwise(pl.lit("test"))).alias(SPLIT_COLUMN)


def _split_of_bad_rows(source: Source, good: pl.DataFrame, bad: pl.DataFrame) -> pl.DataFrame:
    """``bad`` with the split each row would have joined, where that is known (else null), so that a split's
    share of bad rows can be checked: by time for a temporal split, by the ``by`` value for a grouped random one.
    """
    split = source.split
    if split.kind == "temporal":
        if split.cutoffs:
            starts = [_parse_cutoff(split.cutoffs[s]) for s in ("valid", "test")]
        else:
            starts = [good.filter(pl.col(SPLIT_COLUMN) == s)[TIME_COLUMN].min() for s in ("valid", "test")]
        return bad.with_columns(_split_by_time(starts))
    if split.by is not None:
        keys = good.select(split.by, SPLIT_COLUMN).unique()
        return bad.join(keys, on=split.by, how="left")
    return bad.with_columns(pl.lit(None, dtype=pl.String).alias(SPLIT_COLUMN))  # a row's split is a random draw


def _parse_cutoff(value: str) -> Any:
    parsed = pl.Series([value]).str.to_datetime(strict=False).cast(pl.Datetime("us"))
    if parsed.is_null().any():
        raise ValueError(f"split cutoff {value!r} is not a date or date-time (e.g. 2024-03-01 or 2024-03-01 12:00)")
    return parsed.item()


@dataclass(frozen=True)
class _Joined:
    """The interactions joined with their side tables, flagged per row, before the split."""

    flagged: pl.DataFrame  # every interaction row, with _file, _file_index, _row, _reason (and _split, _time)
    label: str  # the interactions, for messages
    files: list[str]
    needed: list[str]  # raw columns read
    joins: list[dict[str, Any]]  # per join: table, key, how, rows matched and unmatched
    side_columns: list[dict[str, str]]  # per join: provided column -> table label


def _join(schema: Schema, source: Source) -> _Joined:
    """Reads, checks (file level) and joins the tables, and flags every row's first problem."""
    if source.split.kind == "files":
        parts = [(s, _open(schema, source.split.files[s], f"source split {s!r}")) for s in SPLITS]
    else:
        parts = [(None, _open(schema, source.interactions, "source interactions"))]
    main = parts[0][1]
    sides = [(j, _open(schema, j.table, f"source join {j.table}")) for j in source.joins]
    needed = _needed_columns(schema, source)
    for d in source.derive:
        clash = [t.label for t in [main, *(t for _, t in sides)] if d.name in t.columns]
        if clash:
            raise DataError(f"{clash[0]}: derived column {d.name!r} would replace the column of that name")
    provider = _providers(needed, main, sides)
    # Join keys are read from the interactions even when no feature uses them.
    keys = [j.key for j in source.joins if j.key in main.columns and j.key not in provider]
    own = [c for c in needed if provider[c] == -1] + list(dict.fromkeys(keys))
    where = {c: sides[i][1].label for c, i in provider.items() if i >= 0}
    frames, first_index = [], 0
    for split, table in parts:
        for f in table.files:
            cols = open_parquet(f)
            missing = [c for c in own if c not in cols]
            if missing:
                raise DataError(f"{f}: missing column(s) {missing}; the file has {list(cols)}")
            check_types(f, cols, schema)
            _check_same_types(f, cols, main.files[0], main.columns, own)
        scan = _scan(table, own, first_index)
        frames.append(scan if split is None else scan.with_columns(pl.lit(split).alias(SPLIT_COLUMN)))
        first_index += len(table.files)
    joined = pl.concat(frames)
    key_types = {c: main.columns[c] for c in own}
    for i, (join, table) in enumerate(sides):
        check_types(table.files[0], table.columns, schema)
        if join.key not in key_types:
            raise DataError(f"{main.label}: join key {join.key!r} (of {table.label}) is not a column here")
        if join.key in table.columns and table.columns[join.key] != key_types[join.key]:
            raise DataError(
                f"{table.label}: join key {join.key!r} has type {table.columns[join.key]}, but {key_types[join.key]} "
                f"in {main.label}"
            )
        provided = [c for c, j in provider.items() if j == i]
        joined = joined.join(_side_frame(join, table, provided, i), on=join.key, how="left")
        key_types.update({c: table.columns[c] for c in provided})
    if source.timestamp is not None:
        label = where.get(source.timestamp.column, main.label)
        joined = joined.with_columns(_time_expr(source.timestamp, key_types[source.timestamp.column], label))
        joined = joined.with_columns([_derived_expr(d) for d in source.derive])
    # The item check runs here, on the user's rows, so that its message names their file and row.
    known_items = images.item_ids(schema) if schema.image else None
    problem = pl.coalesce(_source_problem(source, sides, where), row_problem(schema, known_items, where))
    flagged = joined.with_columns(problem.alias(REASON_COLUMN)).collect()
    files = [f for _, t in parts for f in t.files]
    rows_in = sum(pl.scan_parquet(f).select(pl.len()).collect().item() for f in files)
    if flagged.height != rows_in:
        raise RuntimeError(f"source joins changed the interactions: {rows_in} rows in, {flagged.height} joined")
    joins = []
    for i, (join, table) in enumerate(sides):
        matched = int(flagged[f"_matched_{i}"].count())
        counts = {"rows_matched": matched, "rows_unmatched": rows_in - matched}
        joins.append({"table": table.label, "key": join.key, "how": join.how} | counts)
    side_columns = [{c: t.label for c, j in provider.items() if j == i} for i, (_, t) in enumerate(sides)]
    return _Joined(flagged, main.label, [str(f) for f in files], needed, joins, side_columns)


def stage(schema: Schema, out_dir: Path) -> tuple[Schema, dict[str, Any]]:
    """Writes ``out_dir/source/<split>.parquet`` (and the quarantine); returns the schema over them and a report."""
    source = schema.source
    assert source is not None, "stage needs a schema with a source"
    joined = _join(schema, source)
    flagged = joined.flagged
    reasons = _check_bad_rows(schema, joined)
    bad = flagged.filter(pl.col(REASON_COLUMN).is_not_null())
    if bad.height:
        (out_dir / "quarantine").mkdir(parents=True, exist_ok=True)
        bad.write_parquet(out_dir / QUARANTINE_FILE)
    # File and row last: ties keep the input order, so the split does not depend on the join's output order.
    order = [TIME_COLUMN, schema.group] + ([schema.item] if schema.item else []) + [FILE_INDEX, ROW_COLUMN]
    good = _split_column(source, flagged.filter(pl.col(REASON_COLUMN).is_null()), order)
    if source.split.kind != "files":  # a files split's shares were checked with the rest, before the split
        attributed = pl.concat([good, _split_of_bad_rows(source, good, bad)], how="diagonal")
        _check_bad_rows(schema, replace(joined, flagged=attributed))
    (out_dir / SOURCE_DIR).mkdir(parents=True, exist_ok=True)
    files, counts = {}, {}
    keep = list(dict.fromkeys(joined.needed + [d.name for d in source.derive]))
    for split in SPLITS:
        part = good.filter(pl.col(SPLIT_COLUMN) == split)
        if part.height == 0:
            ts = source.timestamp.column if source.timestamp else ""
            cutoffs = f" at cutoffs {source.split.cutoffs} of column {ts!r}" if source.split.cutoffs else ""
            raise DataError(
                f"{joined.label}: split {split!r} is empty after the {source.split.kind} split{cutoffs} of "
                f"{flagged.height - bad.height} good row(s)"
            )
        path = out_dir / SOURCE_DIR / f"{split}.parquet"
        part.select(keep).write_parquet(path)
        files[split] = str(path.resolve())  # absolute: a relative --out would resolve against the schema
        counts[split] = {"rows": part.height} | {
            f"positive_rate_{lb.name}": float(part.select(label_expr(lb).mean()).item()) for lb in schema.labels
        }
        if source.timestamp is not None:
            counts[split] |= {"first_time": str(part[TIME_COLUMN].min()), "last_time": str(part[TIME_COLUMN].max())}
    rows_out = sum(c["rows"] for c in counts.values())
    if rows_out + bad.height != flagged.height:
        raise RuntimeError(f"source: {flagged.height} rows in but {rows_out} split + {bad.height} quarantined")
    leak, early, warnings = None, None, []
    if source.timestamp is not None:
        early, warnings = _temporal_overlap(schema, source, good, counts)
        leak = any(early.values())
        if leak and source.split.kind == "temporal":
            raise RuntimeError("temporal split: a later split holds a timestamp before the end of an earlier one")
    report = {
        "interactions": joined.files,
        "rows_in": flagged.height,
        "rows_out": rows_out,
        "rows_quarantined": bad.height,
        "reasons": reasons,
        "joins": joined.joins,
        "split": {"kind": source.split.kind, "counts": counts, "temporal_leak": leak, "temporal_leak_rows": early},
        "warnings": warnings,
    }
    # Every row check already ran on the user's rows above: a staged row that a check would still set aside is a
    # bug of this module, which the feature step reports as such (quarantine lets it see every such row).
    return replace(schema, files=files, source=None, bad_rows="quarantine"), report


def _temporal_overlap(
    schema: Schema, source: Source, good: pl.DataFrame, counts: dict[str, dict[str, Any]]
) -> tuple[dict[str, int], list[str]]:
    """Per later split, its rows timestamped before the last time of an earlier split; warnings for given files.

    A random split overlaps in time by design, so only a files split (whose files may overlap unintentionally)
    gets a warning.
    """
    assert source.timestamp is not None, "the overlap needs a timestamp"
    times = [good.filter(pl.col(SPLIT_COLUMN) == s)[TIME_COLUMN] for s in SPLITS]
    early, warnings = {}, []
    for i, split in enumerate(SPLITS[1:], start=1):
        end = max(t.max() for t in times[:i])  # type: ignore[type-var]
        early[split] = int((times[i] < end).sum())
        if early[split] and source.split.kind == "files":
            warnings.append(
                f"{schema.resolve(source.split.files[split])}: column {source.timestamp.column!r} (timestamp): "
                f"{early[split]} of {counts[split]['rows']} row(s) of split {split!r} lie before {end}, the last "
                "time of an earlier split; the split files overlap in time, so its metrics may see the future"
            )
    return early, warnings
