"""Per-rank sharding, equal batch counts and batch contents against a naive row-by-row construction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.loader import RankLoader
from features.processor import FeatureMap, fit, processed_files, transform
from features.schema import OOV_ID, load_schema

pytestmark = pytest.mark.unit


@pytest.fixture
def processed(tiny_data, tmp_path: Path) -> tuple[list[Path], FeatureMap]:
    schema = load_schema(tiny_data(n=1000))
    out = tmp_path / "feat"
    fmap = fit(schema, out)
    transform(schema, out, "train", fmap, row_group_size=96)
    return processed_files(out, "train"), fmap


def _rows(loader: RankLoader) -> list[int]:
    """Row identities (via the 'slot'+'user'+... would be ambiguous), so use a dense value as a row key."""
    return [float(v) for b in loader for v, w in zip(b.dense[:, 1].tolist(), b.weights.tolist(), strict=True) if w > 0]


def test_batch_matches_naive_rows(processed) -> None:
    files, fmap = processed
    frame = pl.read_parquet(files)
    batch = next(iter(RankLoader(files, fmap, batch_size=64, prefetch=0)))
    rows = frame.head(64).to_dicts()
    # Naive KJT: per key, per row, the id list.
    for key in fmap.sparse_names:
        jt = batch.sparse[key]
        got = [
            jt.values()[o : o + n].tolist()
            for o, n in zip(jt.offsets()[:-1].tolist(), jt.lengths().tolist(), strict=True)
        ]
        want = [r[key] if isinstance(r[key], list) else [r[key]] for r in rows]
        assert got == want, key
    assert torch.equal(batch.dense, torch.tensor([[r[d] for d in fmap.dense_names] for r in rows]))
    assert batch.labels[:, 0].tolist() == [float(r["label_click"]) for r in rows]
    assert batch.group_ids.tolist() == [r["group_id"] for r in rows]
    assert batch.item_ids.tolist() == [r["item_id"] for r in rows]
    assert batch.weights.tolist() == [1.0] * 64


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    world=st.integers(1, 5), batch=st.integers(1, 300), shuffle=st.booleans(), mode=st.sampled_from(["train", "eval"])
)
def test_shards_are_disjoint_equal_and_complete(processed, world: int, batch: int, shuffle: bool, mode: str) -> None:
    files, fmap = processed
    loaders = [
        RankLoader(files, fmap, batch, r, world, shuffle=shuffle, seed=3, mode=mode, prefetch=0) for r in range(world)
    ]
    batches = [list(ld) for ld in loaders]
    assert len({len(b) for b in batches}) == 1, "every rank must yield the same number of batches"
    assert all(len(b) == len(ld) for b, ld in zip(batches, loaders, strict=True))
    assert len({tuple(x.batch_size for x in b) for b in batches}) == 1, "batch sizes must agree across ranks"
    real = [v for ld in loaders for v in _rows(ld)]
    everything = pl.read_parquet(files)["age"].to_list()
    assert len(real) == len(set(real)), "ranks must not share rows"
    if mode == "eval":
        assert sorted(real) == sorted(everything)
    else:
        assert len(real) == len(everything) - len(everything) % world
        assert loaders[0].rows_skipped == len(everything) % world
        assert set(real) <= set(everything)


def test_shuffle_is_seeded_and_changes_per_epoch(processed) -> None:
    files, fmap = processed
    a = RankLoader(files, fmap, 100, shuffle=True, seed=1)
    b = RankLoader(files, fmap, 100, shuffle=True, seed=1)
    assert _rows(a) == _rows(b)
    first = _rows(a)
    a.set_epoch(1)
    second = _rows(a)
    assert first != second and sorted(first) == sorted(second)
    assert _rows(RankLoader(files, fmap, 100, shuffle=True, seed=2)) != first


def test_prefetch_gives_the_same_batches(processed) -> None:
    files, fmap = processed
    plain = _rows(RankLoader(files, fmap, 77, prefetch=0))
    assert _rows(RankLoader(files, fmap, 77, prefetch=3)) == plain


def test_eval_padding_has_zero_weight(processed) -> None:
    files, fmap = processed
    total = pl.read_parquet(files).height
    world = 3
    weights = [torch.cat([b.weights for b in RankLoader(files, fmap, 64, r, world, mode="eval")]) for r in range(world)]
    assert sum(float(w.sum()) for w in weights) == total
    assert {len(w) for w in weights} == {-(-total // world)}
    assert np.all(np.isin(torch.cat(weights).numpy(), [0.0, 1.0]))


def _ids(loader: RankLoader, key: str) -> list[list[int]]:
    return [batch.sparse[key].values().tolist() for batch in loader]


def test_id_dropout_replaces_ids_by_the_oov_id_at_its_rate_and_nothing_else(processed) -> None:
    """DropoutNet-style id dropout: only the named feature changes, only to OOV, at about the asked rate, on the
    same rows in the same order; the same seed drops the same ids, another seed others; evaluation never drops."""
    files, fmap = processed
    args = dict(batch_size=50, shuffle=True, seed=3, prefetch=0)
    plain, dropped = RankLoader(files, fmap, **args), RankLoader(files, fmap, **args, id_dropout={"item": 0.3})
    assert _rows(plain) == _rows(dropped)  # the shuffle is untouched
    for key in fmap.sparse_names:
        if key != "item":
            assert _ids(plain, key) == _ids(dropped, key), key
    before = np.concatenate([np.asarray(b) for b in _ids(plain, "item")])
    after = np.concatenate([np.asarray(b) for b in _ids(dropped, "item")])
    changed = before != after
    assert (after[changed] == OOV_ID).all()
    eligible = (before != OOV_ID).sum()
    rate = changed.sum() / eligible
    assert abs(rate - 0.3) < 4 * (0.3 * 0.7 / eligible) ** 0.5, rate  # within 4 binomial standard deviations
    assert _ids(dropped, "item") == _ids(RankLoader(files, fmap, **args, id_dropout={"item": 0.3}), "item")
    other_seed = RankLoader(files, fmap, **{**args, "seed": 4}, id_dropout={"item": 0.3})
    assert _ids(other_seed, "item") != _ids(RankLoader(files, fmap, **{**args, "seed": 4}), "item")
    evaluation = RankLoader(files, fmap, batch_size=50, mode="eval", prefetch=0, id_dropout={"item": 0.3})
    assert _ids(evaluation, "item") == _ids(RankLoader(files, fmap, batch_size=50, mode="eval", prefetch=0), "item")


@pytest.mark.parametrize(
    ("id_dropout", "message"),
    [
        ({"nope": 0.1}, "'nope' is not a sparse feature"),
        ({"tags": 0.1}, "'tags' is multi-valued"),
        ({"item": 1.0}, r"probability of 'item' must be in \[0, 1\), got 1.0"),
    ],
)
def test_bad_id_dropout_is_one_clear_error(processed, id_dropout: dict[str, float], message: str) -> None:
    files, fmap = processed
    with pytest.raises(ValueError, match=message):
        RankLoader(files, fmap, batch_size=50, id_dropout=id_dropout)
