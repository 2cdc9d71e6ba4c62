"""Test data builders shared across test packages."""

from __future__ import annotations

import contextlib
import ipaddress
import os
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import yaml

TINY_SCHEMA: dict[str, Any] = {
    "name": "tiny",
    "files": {"train": "train.parquet", "valid": "valid.parquet", "test": "test.parquet"},
    "labels": [{"name": "click", "column": "click"}],
    "group": "user",
    "item": "item",
    "sparse": [
        {"name": "user", "column": "user", "encoding": "vocab", "min_count": 2},
        {"name": "item", "column": "item", "encoding": "vocab"},
        {"name": "tags", "column": "tags", "kind": "multi", "encoding": "vocab"},
        {"name": "city", "column": "city", "encoding": "hash", "buckets": 50},
        {"name": "slot", "column": "slot", "encoding": "identity", "num_ids": 5},
    ],
    "dense": [
        {"name": "price", "column": "price", "transform": "log1p"},
        {"name": "age", "column": "age"},
    ],
    "slices": ["country"],
}


def make_frame(n: int, seed: int) -> pl.DataFrame:
    """Raw rows whose click depends on user, item and price, so that a model has something to learn."""
    rng = np.random.default_rng(seed)
    tags_pool = ["a", "b", "c", "d", "e"]
    user = rng.integers(0, 40, n)
    item = rng.integers(100, 130, n)
    price = rng.exponential(10.0, n)
    logit = 0.8 * np.sin(user) + 0.8 * np.cos(item) - 0.05 * price
    return pl.DataFrame(
        {
            "user": user,
            "item": item,
            "tags": [list(rng.choice(tags_pool, size=rng.integers(0, 4), replace=False)) for _ in range(n)],
            "city": [f"city{c}" for c in rng.integers(0, 20, n)],
            "slot": rng.integers(0, 5, n),
            "price": price,
            "age": rng.normal(40, 10, n),
            "country": rng.choice(["DE", "FR"], n),
            "click": (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8),
        },
        schema_overrides={"tags": pl.List(pl.String)},
    )


def write_tiny_dataset(folder: Path, n: int = 400, **schema_overrides: Any) -> Path:
    """train/valid/test parquet (n, n/4, n/4 rows) and schema.yaml in ``folder``; returns the schema path."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, split in enumerate(("train", "valid", "test")):
        make_frame(n if split == "train" else n // 4, seed=i).write_parquet(folder / f"{split}.parquet")
    schema_path = folder / "schema.yaml"
    schema_path.write_text(yaml.safe_dump({**TINY_SCHEMA, **schema_overrides}))
    return schema_path


RAW_SCHEMA: dict[str, Any] = {
    "name": "shop",
    "source": {
        "interactions": "events/*.parquet",
        "joins": [{"table": "users.parquet", "key": "user_id"}, {"table": "items.parquet", "key": "item_id"}],
        "timestamp": {"column": "ts", "format": "%Y-%m-%d %H:%M:%S"},
        "derive": [
            {"name": "hour", "part": "hour"},
            {"name": "weekday", "part": "weekday"},
            {"name": "item_age", "part": "age_years", "since": "release_year"},
        ],
        "split": {"kind": "temporal", "fractions": [0.8, 0.1, 0.1]},
    },
    "labels": [
        {"name": "like", "column": "rating", "threshold": 4},
        {"name": "engaged", "column": "event", "values": ["click", "buy"]},
    ],
    "group": "user_id",
    "item": "item_id",
    "sparse": [
        {"name": "user", "column": "user_id", "non_negative": True},
        {"name": "item", "column": "item_id", "non_negative": True},
        {"name": "category", "column": "category", "encoding": "hash", "buckets": 16},
        {"name": "country", "column": "country", "fill_null": "unknown"},
        {"name": "hour", "column": "hour", "encoding": "identity", "num_ids": 24},
        {"name": "weekday", "column": "weekday", "encoding": "identity", "num_ids": 7},
        {"name": "position", "column": "position", "encoding": "bucket", "edges": [1, 3, 10]},
        {"name": "price_bucket", "column": "price", "encoding": "bucket", "quantiles": 4},
    ],
    "dense": [
        {"name": "price", "column": "price", "transform": "log1p", "fill_null": 0},
        {"name": "age", "column": "age"},
        {"name": "item_age", "column": "item_age", "transform": "log1p", "fill_null": 0},
    ],
    "slices": ["country"],
    "entities": ["category"],
    "bad_rows": "quarantine",
    "max_bad_share": 0.05,
}


def write_tiny_image_dataset(folder: Path, photos: np.ndarray, n: int = 200) -> Path:
    """``write_tiny_dataset`` with an ``image:`` section: items 100.. get ``photos`` (k x 28 x 28 uint8) in order."""
    schema = write_tiny_dataset(
        folder, n=n, image={"items": "items.parquet", "item_column": "item", "array": "images.npy"}
    )
    pl.DataFrame({"item": list(range(100, 100 + len(photos))), "image_index": list(range(len(photos)))}).write_parquet(
        folder / "items.parquet"
    )
    np.save(folder / "images.npy", photos)
    return schema


def make_raw_tables(n: int, seed: int = 0, n_users: int = 60, n_items: int = 40) -> dict[str, pl.DataFrame]:
    """Raw tables as a shop would export them: events (string times, ratings, event kinds), users and items.

    Ratings and events depend on user, item and price, so a model has something to learn. Every user has an age
    and every item a release year; a few users lack a country and a few events a price (filled by the schema).
    """
    rng = np.random.default_rng(seed)
    user = rng.integers(0, n_users, n)
    item = rng.integers(0, n_items, n)
    price = np.round(rng.exponential(20.0, n), 2)
    affinity = np.sin(user) + np.cos(item) - 0.02 * price
    seconds = np.sort(rng.integers(0, 90 * 86_400, n)) + 1_704_067_200  # 90 days from 2024-01-01
    times = pl.from_epoch(pl.Series(seconds), time_unit="s").dt.strftime("%Y-%m-%d %H:%M:%S")
    event = np.where(affinity + rng.normal(0, 1, n) > 0.8, "buy", np.where(affinity > -0.5, "click", "view"))
    events = pl.DataFrame(
        {
            "user_id": user,
            "item_id": item,
            "ts": times,
            "rating": np.clip(np.round(3 + affinity + rng.normal(0, 1, n)), 1, 5),
            "event": event,
            "price": pl.Series(price).scatter(np.arange(0, n, 37), None),
            "position": rng.integers(0, 20, n),
        }
    )
    users = pl.DataFrame(
        {
            "user_id": np.arange(n_users),
            "age": rng.normal(38, 12, n_users).round(),
            "country": pl.Series(rng.choice(["DE", "FR", "IT"], n_users)).scatter([3, 7], None),
        }
    )
    items = pl.DataFrame(
        {
            "item_id": np.arange(n_items),
            "category": [f"cat{c}" for c in rng.integers(0, 6, n_items)],
            "release_year": rng.integers(2015, 2024, n_items),
        }
    )
    return {"events": events, "users": users, "items": items}


def write_raw_tables(folder: Path, n: int = 2000, seed: int = 0, **schema_overrides: Any) -> Path:
    """``events/part-0.parquet``, ``events/part-1.parquet``, ``users.parquet``, ``items.parquet`` and schema.yaml."""
    tables = make_raw_tables(n, seed)
    (folder / "events").mkdir(parents=True, exist_ok=True)
    half = n // 2
    tables["events"][:half].write_parquet(folder / "events" / "part-0.parquet")
    tables["events"][half:].write_parquet(folder / "events" / "part-1.parquet")
    tables["users"].write_parquet(folder / "users.parquet")
    tables["items"].write_parquet(folder / "items.parquet")
    schema_path = folder / "schema.yaml"
    schema_path.write_text(yaml.safe_dump({**RAW_SCHEMA, **schema_overrides}, sort_keys=False))
    return schema_path


def two_task_schema(path: Path) -> Path:
    """The tiny data set at ``path`` (its schema.yaml) with a second label, so paths run multi-task."""
    for split in ("train", "valid", "test"):
        part = path.parent / f"{split}.parquet"
        df = pl.read_parquet(part)
        df.with_columns(((pl.col("price") > 8) & (pl.col("click") == 1)).cast(pl.Int8).alias("buy")).write_parquet(part)
    data = yaml.safe_load(path.read_text())
    data["labels"].append({"name": "buy", "column": "buy"})
    path.write_text(yaml.safe_dump(data))
    return path


def build_tiny_export(root: Path, vision: Any = None, hiformer: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """An export (untrained Hiformer, seed 0, two tasks) of the tiny data set under ``root``: (export, features).

    ``root/raw`` holds the raw splits; ``root/features`` the fitted map and the processed train and test splits.
    ``vision``: a ``ranker.build.VisionConfig``; the data then has a photo of each of its 30 items
    (:func:`write_tiny_image_dataset`), and a frozen tower's export holds their embeddings (built as training
    builds them). ``hiformer``: its hyper-parameters (default: one layer, the rest at the registered defaults).
    """
    import torch
    import torch.distributed.checkpoint as dcp

    from features.images import load_images
    from features.processor import fit, transform
    from features.schema import load_schema
    from ranker.build import ModelConfig, build_ranker, cached_item_embeddings
    from ranker.export import export_checkpoint
    from ranker.model import RankerTrain

    if vision is None:
        schema_path = write_tiny_dataset(root / "raw", n=400)
    else:
        photos = np.random.default_rng(0).integers(0, 255, (30, 28, 28), dtype=np.uint8)
        schema_path = write_tiny_image_dataset(root / "raw", photos, n=400)
    schema = load_schema(two_task_schema(schema_path))
    features = root / "features"
    fmap = fit(schema, features)
    for split in ("train", "test"):
        transform(schema, features, split, fmap, row_group_size=32)
    cfg = ModelConfig(embedding_dim=8, interaction_kwargs={"hiformer": hiformer or {"num_layers": 1}}, vision=vision)
    torch.manual_seed(0)
    frozen = vision is not None and vision.frozen
    table = cached_item_embeddings(vision, features, seed=0) if frozen else None
    images = np.asarray(load_images(features)) if vision is not None and not frozen else None
    model = RankerTrain(build_ranker(fmap, cfg, images, item_embeddings=table))
    dcp.save({"model": model.state_dict()}, checkpoint_id=str(root / "ckpt"), no_dist=True)
    export_checkpoint(root / "ckpt", fmap, features, cfg, {"note": "test"}, root / "run" / "export", table)
    return root / "run" / "export", features


def variant_export(source: Path, out: Path, change: Any) -> Path:
    """A copy of the export ``source`` at ``out`` whose model.pt is ``change(state_dict)`` (modified in place)."""
    import shutil

    import torch

    shutil.copytree(source, out)
    state = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    with torch.no_grad():
        change(state)
    torch.save(state, out / "model.pt")
    return out


def train_tiny_export(source: Path, features: Path, out: Path, steps: int = 150, lr: float = 0.01) -> Path:
    """A copy of the export ``source`` trained in this process (unsharded, Adam) on ``features``' train split."""
    import torch

    from features.loader import RankLoader
    from features.processor import FeatureMap, processed_files
    from ranker.export import load_exported
    from ranker.model import RankerTrain

    model = RankerTrain(load_exported(source).train())
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loader = RankLoader(processed_files(features, "train"), FeatureMap.load(source), 32, shuffle=True, prefetch=0)
    done = 0
    while done < steps:
        for batch in loader:
            loss, _ = model(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
    trained = model.model.state_dict()
    return variant_export(source, out, lambda state: state.update(trained))


def tiny_train_config(folder: Path, features: Path, name: str, **overrides: object) -> Path:
    """``folder/name.yaml``: a small Hiformer training run of ``features`` into ``folder/name`` (2 epochs,
    validation every 4 steps, no early stopping, no tracking); ``overrides`` replace top-level keys."""
    cfg = {
        "features": str(features),
        "out_dir": str(folder / name),
        "model": {"interaction": "hiformer", "embedding_dim": 8, "interaction_kwargs": {"hiformer": {"num_layers": 1}}},
        "batch_size": 32,
        "epochs": 2,
        "eval_every": 4,
        "patience": 100,
        "tracking": False,
        **overrides,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...), from /proc."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            parents[int(stat.parent.name)] = int(stat.read_text().rpartition(")")[2].split()[1])
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def _proc_address(hex_address: str) -> str:
    """An address of /proc/net/tcp{,6}: IPv4 as one little-endian word, IPv6 as four."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def listening_sockets() -> dict[str, tuple[str, int]]:
    """Every listening TCP socket of this machine's network namespace: ``socket:[inode]`` -> (address, port)."""
    sockets = {}
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                address, port = fields[1].split(":")
                sockets[f"socket:[{fields[9]}]"] = (_proc_address(address), int(port, 16))
    return sockets


def listening(pids: list[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of each listening TCP socket that the processes ``pids`` hold, from /proc."""
    listening = listening_sockets()
    found = []
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if (target := os.readlink(fd)) in listening:
                        found.append((pid, *listening[target]))
    return found
