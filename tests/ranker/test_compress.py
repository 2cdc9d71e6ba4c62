"""`ranker compress`: exactness of pruning and full-rank SVD, compressed exports load/evaluate/serve like any export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
import yaml

from features.loader import RankLoader
from features.processor import FeatureMap, fit, processed_files, transform
from features.schema import load_schema
from features.strict_yaml import ConfigError, from_dict
from pipelines.compress import compress_export, load_compress_config
from pipelines.evaluate import evaluate_model
from pipelines.metrics import EvalConfig
from ranker.build import ModelConfig, build_ranker
from ranker.compress import CompressConfig, FinetuneConfig, LowRankConfig, ServeConfig, compress_model
from ranker.export import export_checkpoint, load_exported
from ranker.model import RankerTrain
from ranker.serving import Scorer, TensorRanker
from tests.helpers import write_tiny_dataset

pytestmark = pytest.mark.e2e
NO_SERVE = ServeConfig(program=False)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 2-layer post-LN Hiformer trained without prune_last, full-rank values, factorised keys."""
    root = tmp_path_factory.mktemp("compress")
    schema = load_schema(write_tiny_dataset(root / "raw", n=400))
    features = root / "features"
    fmap = fit(schema, features)
    for split in ("train", "test"):
        transform(schema, features, split, fmap, row_group_size=64)
    kwargs = {"num_layers": 2, "norm": "post", "prune_last": False, "rank_k": 12, "rank_v": None}
    cfg = ModelConfig(embedding_dim=8, interaction_kwargs={"hiformer": kwargs})
    torch.manual_seed(0)
    model = RankerTrain(build_ranker(fmap, cfg))
    with torch.no_grad():  # non-trivial LayerNorm and head weights, so that exactness tests mean something
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(0.1 * torch.randn_like(p))
    dcp.save({"model": model.state_dict()}, checkpoint_id=str(root / "ckpt"), no_dist=True)
    export_checkpoint(root / "ckpt", fmap, features, cfg, {"note": "test"}, root / "run" / "export")
    return root / "run" / "export", features


def _batch(features: Path, export_dir: Path, n: int = 64):
    fmap = FeatureMap.load(export_dir)
    return next(iter(RankLoader(processed_files(features, "test"), fmap, n, prefetch=0)))


def test_prune_last_is_exact(exported, tmp_path: Path) -> None:
    export_dir, features = exported
    manifest = compress_export(export_dir, CompressConfig(prune_last=True, serve=NO_SERVE), tmp_path / "p")
    batch = _batch(features, export_dir)
    before, after = load_exported(export_dir), load_exported(tmp_path / "p")
    assert after.interaction.layers[-1].query.out_tokens == 1
    assert manifest["results"]["parameters"] < manifest["results"]["applied"]["parameters_before"]
    with torch.no_grad():
        torch.testing.assert_close(after(batch), before(batch), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="already compressed"):
        compress_export(tmp_path / "p", CompressConfig(prune_last=True), tmp_path / "p2")


def test_prune_last_on_a_model_trained_pruned_is_recorded_not_an_error(exported, tmp_path: Path) -> None:
    """The README's example compresses the demo's Hiformer, which trains with its last layer pruned already."""
    export_dir, features = exported
    pruned = compress_export(export_dir, CompressConfig(prune_last=True, serve=NO_SERVE), tmp_path / "p")
    assert pruned["results"]["applied"]["prune_last"] is True
    cfg = from_dict(ModelConfig, json.loads((tmp_path / "p" / "model_config.json").read_text()))
    model, _, applied = compress_model(load_exported(tmp_path / "p"), cfg, CompressConfig(prune_last=True), None)
    assert applied["prune_last"] == "already pruned when trained"
    assert model.interaction.layers[-1].query.out_tokens == 1


def test_low_rank_exact_at_full_rank_and_smaller_by_energy(exported, tmp_path: Path) -> None:
    export_dir, features = exported
    batch = _batch(features, export_dir)
    before = load_exported(export_dir)
    # The current ranks: keys 12 (already factorised), values full: a square (T + K)·D = 7·8 = 56 matrix.
    full = CompressConfig(low_rank=LowRankConfig(rank_k=12, rank_v=56), serve=NO_SERVE)
    compress_export(export_dir, full, tmp_path / "full")
    exact = load_exported(tmp_path / "full")
    kwargs = json.loads((tmp_path / "full" / "model_config.json").read_text())["interaction_kwargs"]["hiformer"]
    assert (kwargs["rank_k"], kwargs["rank_v"]) == (12, 56)
    with torch.no_grad():
        torch.testing.assert_close(exact(batch), before(batch), rtol=0, atol=1e-5)
    compress_export(export_dir, CompressConfig(low_rank=LowRankConfig(energy=0.7), serve=NO_SERVE), tmp_path / "e")
    applied = json.loads((tmp_path / "e" / "compression.json").read_text())["applied"]["low_rank"]
    assert applied["ranks"]["rank_v"] < 56 and applied["ranks"]["rank_k"] <= 12
    assert all(p["energy_kept"] >= 0.7 - 1e-9 for p in applied["projections"].values())
    with torch.no_grad():
        assert torch.isfinite(load_exported(tmp_path / "e")(batch)).all()


def test_finetune_is_deterministic_and_evaluates(exported, tmp_path: Path) -> None:
    export_dir, features = exported
    cfg = CompressConfig(
        prune_last=True,
        low_rank=LowRankConfig(energy=0.8),
        finetune=FinetuneConfig(features=str(features), steps=6, batch_size=64),
        serve=NO_SERVE,
    )
    a = compress_export(export_dir, cfg, tmp_path / "a")
    compress_export(export_dir, cfg, tmp_path / "b")
    assert a["results"]["applied"]["finetune"]["steps"] == 6
    sa = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    sb = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # The output is an export like any other: `ranker evaluate` takes it unchanged.
    manifest = evaluate_model(tmp_path / "a", features, tmp_path / "eval", eval_config=EvalConfig(n_bootstrap=5))
    assert manifest["results"]["rows"] > 0


def test_bf16_dense_part_loads_and_stays_close(exported, tmp_path: Path) -> None:
    export_dir, features = exported
    compress_export(export_dir, CompressConfig(dense_dtype="bfloat16", serve=NO_SERVE), tmp_path / "bf")
    model = load_exported(tmp_path / "bf")
    assert model.heads.heads[0][0].weight.dtype == torch.bfloat16
    assert model.sparse_arch.ebc.embedding_bags["t_user"].weight.dtype == torch.float32
    batch = _batch(features, export_dir)
    with torch.no_grad():
        out, ref = model(batch), load_exported(export_dir)(batch)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=0.1)


def test_cli_compress(exported, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.cli import main

    export_dir, _ = exported
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"prune_last": True, "serve": {"program": False}}))
    out = tmp_path / "cli"
    args = ["compress", "--model", str(export_dir), "--config", str(config), "--out", str(out)]
    args += ["--set", "tracking=false"]  # logging the model is tested in tests/pipelines/test_registry.py
    assert main([*args, "--set", "low_rank.rank_k=4"]) == 0
    assert "compressed:" in capsys.readouterr().out
    kwargs = json.loads((out / "model_config.json").read_text())["interaction_kwargs"]["hiformer"]
    assert kwargs["prune_last"] is True and kwargs["rank_k"] == 4
    assert main([*args, "--set", "prune_lst=true"]) == 2  # unknown key: a message, exit code 2
    assert "prune_lst" in capsys.readouterr().err


def test_config_rejects_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"prune_last": True, "low_rank": {"energy": 0.9, "rnak_k": 3}}))
    with pytest.raises(ConfigError, match="rnak_k"):
        load_compress_config(path)
    path.write_text(yaml.safe_dump({"dense_dtype": "int3"}))
    with pytest.raises(ConfigError, match="dense_dtype"):
        load_compress_config(path)
    path.write_text(yaml.safe_dump({"low_rank": {"energy": 0.9}}))
    assert load_compress_config(path).low_rank == LowRankConfig(energy=0.9)


_SERVE_SCRIPT = textwrap.dedent(
    """
    import sys

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("ranker", "features", "pipelines", "torchrec", "fbgemm_gpu"):
                raise ImportError(f"blocked import of {name} in the serving process")
            return None

    sys.meta_path.insert(0, Block())
    import numpy as np
    import torch

    data = np.load(sys.argv[2])
    module = torch.export.load(sys.argv[1]).module()
    with torch.no_grad():
        out = module(torch.from_numpy(data["dense"]), torch.from_numpy(data["values"]),
                     torch.from_numpy(data["lengths"]))
    np.save(sys.argv[3], out.numpy())
    assert not any(m.split(".")[0] in ("ranker", "features", "torchrec") for m in sys.modules)
    """
)


def _check_served(out: Path, features: Path, tmp_path: Path, sizes: tuple[int, ...], atol: float = 1e-5) -> None:
    """Scores of ``out/serve/model.pt2`` in a fresh torch-only process equal ``load_exported(out)``'s."""
    model = load_exported(out)
    script = tmp_path / "serve.py"
    script.write_text(_SERVE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    for n in sizes:
        batch = _batch(features, out, n)
        kjt = batch.sparse
        np.savez(tmp_path / "in.npz", dense=batch.dense.numpy(), values=kjt.values().numpy(),
                 lengths=kjt.lengths().numpy())  # fmt: skip
        # -I: isolated mode, no cwd (the repository) on sys.path, no user site; the meta-path blocker does the rest.
        run = subprocess.run(
            [sys.executable, "-I", str(script), str(out / "serve" / "model.pt2"), str(tmp_path / "in.npz"),
             str(tmp_path / "out.npy")],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        with torch.no_grad():
            expected = model(batch).numpy()
        np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, rtol=0, atol=atol)


def test_served_program_loads_without_training_code(exported, tmp_path: Path) -> None:
    export_dir, features = exported
    out = tmp_path / "served"
    cfg = CompressConfig(prune_last=True, low_rank=LowRankConfig(energy=0.9), serve=ServeConfig(program=True))
    manifest = compress_export(export_dir, cfg, out)
    spec = json.loads((out / "serve" / "serving.json").read_text())
    assert spec == manifest["results"]["serve"] and spec["keys"] == ["user", "item", "tags", "city", "slot"]
    _check_served(out, features, tmp_path, (2, 7, 64))


def test_every_variant_serves_in_a_fresh_process(exported, tmp_path: Path) -> None:
    """bf16 dense part (Hiformer) and an uncompressed DCN-v2: both serve from a torch-only process."""
    export_dir, features = exported
    compress_export(export_dir, CompressConfig(dense_dtype="bfloat16"), tmp_path / "bf16")
    _check_served(tmp_path / "bf16", features, tmp_path, (9,))
    fmap = FeatureMap.load(export_dir)
    cfg = ModelConfig(embedding_dim=8, interaction="dcnv2", interaction_kwargs={"dcnv2": {"hidden": [16]}})
    torch.manual_seed(1)
    model = RankerTrain(build_ranker(fmap, cfg))
    dcp.save({"model": model.state_dict()}, checkpoint_id=str(tmp_path / "ckpt"), no_dist=True)
    export_checkpoint(tmp_path / "ckpt", fmap, features, cfg, {}, tmp_path / "dcn")
    compress_export(tmp_path / "dcn", CompressConfig(), tmp_path / "dcn-served")
    _check_served(tmp_path / "dcn-served", features, tmp_path, (9,))


def test_scorer_equals_batch_scoring(exported) -> None:
    export_dir, features = exported
    model = load_exported(export_dir)
    batch = _batch(features, export_dir, 40)
    kjt = batch.sparse.to_dict()
    c = 40
    user = int(kjt["user"].values()[0])
    # One request: the first row's user for every candidate; candidates keep their own item/tags/city/slot.
    request = {"user": [user], "city": [int(kjt["city"].values()[0])]}
    candidates = {n: (kjt[n].values(), kjt[n].lengths()) for n in ("item", "tags", "slot")}
    scorer = Scorer(model, ["user", "city"])
    scores = scorer.score(request, candidates, dense=batch.dense)
    # The same C rows as a normal batch.
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    parts = {
        "user": (torch.full((c,), user), torch.ones(c, dtype=torch.int32)),
        "city": (torch.full((c,), request["city"][0]), torch.ones(c, dtype=torch.int32)),
        **{n: (v, ln.to(torch.int32)) for n, (v, ln) in candidates.items()},
    }
    keys = model.sparse_arch.feature_names
    flat = KeyedJaggedTensor(
        keys=keys,
        values=torch.cat([parts[k][0] for k in keys]),
        lengths=torch.cat([parts[k][1] for k in keys]),
    )
    with torch.no_grad():
        expected = TensorRanker(model, keys)(batch.dense, flat.values(), flat.lengths())
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="not sparse features"):
        Scorer(model, ["nope"])


@pytest.mark.slow
def test_aoti_package_matches_the_program(exported, tmp_path: Path) -> None:
    """The AOTInductor package (built for this CPU) scores as the eager model does, B = 1 included."""
    export_dir, features = exported
    out = tmp_path / "aoti"
    cfg = CompressConfig(prune_last=True, serve=ServeConfig(program=True, aoti=True))
    manifest = compress_export(export_dir, cfg, out)
    assert manifest["results"]["serve"]["aoti"]["package"] == "model_aoti.pt2"
    package = torch._inductor.aoti_load_package(str(out / "serve" / "model_aoti.pt2"))
    model = load_exported(out)
    for n in (1, 7, 64):
        batch = _batch(features, export_dir, n)
        with torch.no_grad():
            got = package(batch.dense, batch.sparse.values(), batch.sparse.lengths())
            torch.testing.assert_close(got, model(batch), rtol=0, atol=1e-5)
