"""`ranker compress`: exactness of pruning and full-rank SVD, compressed exports load/evaluate/serve like any export."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
import yaml

from common.config import ConfigError, from_dict
from features.loader import RankLoader
from features.processor import FeatureMap, fit, processed_files, transform
from features.schema import load_schema
from pipelines.compress import compress_export, load_compress_config
from pipelines.evaluate import evaluate_model
from pipelines.metrics import EvalConfig
from ranker.build import ModelConfig, build_ranker
from ranker.compress import (
    CompressConfig,
    FinetuneConfig,
    LowRankConfig,
    PruneConfig,
    ServeConfig,
    check_applies,
    compress_model,
)
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
    return _save_export(model, fmap, features, cfg, root / "run" / "export"), features


def _save_export(model: RankerTrain, fmap: FeatureMap, features: Path, cfg: ModelConfig, out: Path) -> Path:
    """``model`` as an export at ``out`` (through a DCP checkpoint beside it, as training writes one)."""
    dcp.save({"model": model.state_dict()}, checkpoint_id=str(out.parent / f"{out.name}-ckpt"), no_dist=True)
    return export_checkpoint(out.parent / f"{out.name}-ckpt", fmap, features, cfg, {"note": "test"}, out)


def _dcnv2_config(**kwargs: object) -> ModelConfig:
    dcnv2 = {"hidden": [16], "structure": "parallel", **kwargs}
    return ModelConfig(embedding_dim=8, interaction="dcnv2", interaction_kwargs={"dcnv2": dcnv2})


@pytest.fixture(scope="module")
def dcnv2_export(exported, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DCN-v2 export of the same features: 3 full cross layers over N = T·D = 6·8 = 48, non-zero biases."""
    _, features = exported
    fmap = FeatureMap.load(exported[0])
    torch.manual_seed(1)
    model = RankerTrain(build_ranker(fmap, _dcnv2_config()))
    with torch.no_grad():  # torchrec initialises cross biases to zero: make them matter to the exactness tests
        for name, p in model.named_parameters():
            if "cross.bias" in name:
                p.add_(0.1 * torch.randn_like(p))
    return _save_export(model, fmap, features, _dcnv2_config(), tmp_path_factory.mktemp("dcnv2") / "export")


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

    TRAINING_CODE = ("common", "ranker", "features", "pipelines", "vision_towers")
    allowed = sys.argv[4:]  # what serving.json "requires" (fbgemm_gpu for quantised tables)

    class Block:
        def find_spec(self, name, path=None, target=None):
            top = name.split(".")[0]
            if top in TRAINING_CODE + ("torchrec", "fbgemm_gpu") and top not in allowed:
                raise ImportError(f"blocked import of {name} in the serving process")
            return None

    sys.meta_path.insert(0, Block())
    import numpy as np
    import torch

    for name in allowed:
        __import__(name)

    data = np.load(sys.argv[2])
    module = torch.export.load(sys.argv[1]).module()
    names = ["dense", "values", "lengths"] + (["image_index"] if "image_index" in data else [])
    with torch.no_grad():
        out = module(*(torch.from_numpy(data[n]) for n in names))
    np.save(sys.argv[3], out.numpy())
    assert not any(m.split(".")[0] in TRAINING_CODE + ("torchrec",) for m in sys.modules)
    """
)


def _check_served(
    out: Path, features: Path, tmp_path: Path, sizes: tuple[int, ...], atol: float = 1e-5
) -> dict[int, np.ndarray]:
    """Scores of ``out/serve/model.pt2`` in a fresh torch-only process (no training code) equal
    ``load_exported(out)``'s on the first n test rows, for each n of ``sizes``; returns them by n."""
    model = load_exported(out)
    requires = json.loads((out / "serve" / "serving.json").read_text()).get("requires", [])
    script = tmp_path / "serve.py"
    script.write_text(_SERVE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    served = {}
    for n in sizes:
        batch = _batch(features, out, n)
        kjt = batch.sparse
        images = {"image_index": batch.image_index.numpy()} if model.vision_arch is not None else {}
        np.savez(tmp_path / "in.npz", dense=batch.dense.numpy(), values=kjt.values().numpy(),
                 lengths=kjt.lengths().numpy(), **images)  # fmt: skip
        # -I: isolated mode, no cwd (the repository) on sys.path, no user site; the meta-path blocker does the rest.
        run = subprocess.run(
            [sys.executable, "-I", str(script), str(out / "serve" / "model.pt2"), str(tmp_path / "in.npz"),
             str(tmp_path / "out.npy"), *requires],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        with torch.no_grad():
            expected = model(batch).numpy()
        served[n] = np.load(tmp_path / "out.npy")
        np.testing.assert_allclose(served[n], expected, rtol=0, atol=atol)
    return served


def test_served_program_loads_without_training_code(exported, tmp_path: Path) -> None:
    export_dir, features = exported
    out = tmp_path / "served"
    cfg = CompressConfig(prune_last=True, low_rank=LowRankConfig(energy=0.9), serve=ServeConfig(program=True))
    manifest = compress_export(export_dir, cfg, out)
    spec = json.loads((out / "serve" / "serving.json").read_text())
    assert spec == manifest["results"]["serve"] and spec["keys"] == ["user", "item", "tags", "city", "slot"]
    _check_served(out, features, tmp_path, (2, 7, 64))


def test_every_variant_serves_in_a_fresh_process(exported, dcnv2_export, tmp_path: Path) -> None:
    """bf16 dense part (Hiformer) and a low-rank-cross, fine-tuned DCN-v2: both serve from a torch-only process."""
    export_dir, features = exported
    compress_export(export_dir, CompressConfig(dense_dtype="bfloat16"), tmp_path / "bf16")
    _check_served(tmp_path / "bf16", features, tmp_path, (9,))
    ft = FinetuneConfig(features=str(features), steps=4, batch_size=64)
    manifest = compress_export(
        dcnv2_export, CompressConfig(low_rank=LowRankConfig(energy=0.9), finetune=ft), tmp_path / "dcn"
    )
    assert manifest["results"]["applied"]["finetune"]["steps"] == 4
    assert manifest["results"]["applied"]["low_rank"]["ranks"]["low_rank"] < 48
    _check_served(tmp_path / "dcn", features, tmp_path, (9,))


def _numpy_truncation(
    kernel: np.ndarray, energy: float | None = None, rank: int | None = None
) -> tuple[int, np.ndarray]:
    """(rank, rank-r truncated SVD) of ``kernel`` by numpy: the least r keeping ``energy`` of sum(s²), or ``rank``."""
    u, s, vt = np.linalg.svd(kernel.astype(np.float64))
    if rank is None:
        rank = int(np.argmax(np.cumsum(s**2) / np.sum(s**2) >= energy)) + 1
    return rank, (u[:, :rank] * s[:rank]) @ vt[:rank]


def test_dcnv2_low_rank_cross_exact_at_full_rank(exported, dcnv2_export, tmp_path: Path) -> None:
    _, features = exported
    batch = _batch(features, dcnv2_export)
    compress_export(dcnv2_export, CompressConfig(low_rank=LowRankConfig(rank=48), serve=NO_SERVE), tmp_path / "full")
    kwargs = json.loads((tmp_path / "full" / "model_config.json").read_text())["interaction_kwargs"]["dcnv2"]
    assert kwargs == {"hidden": [16], "structure": "parallel", "low_rank": 48}
    exact = load_exported(tmp_path / "full")
    assert type(exact.interaction.cross).__name__ == "LowRankCrossNet"
    with torch.no_grad():
        torch.testing.assert_close(exact(batch), load_exported(dcnv2_export)(batch), rtol=0, atol=1e-5)


@pytest.mark.parametrize(("energy", "budget"), [(0.8, None), (0.99, 4)])
def test_dcnv2_low_rank_cross_equals_numpy_truncated_svd(exported, dcnv2_export, tmp_path, energy, budget) -> None:
    """The rank (the largest any layer needs for ``energy``, or the budget), each layer's U V and the model's
    outputs all equal a reference built from numpy's SVD of the trained kernels."""
    _, features = exported
    out = tmp_path / "lr"
    compress_export(
        dcnv2_export, CompressConfig(low_rank=LowRankConfig(energy=energy, rank=budget), serve=NO_SERVE), out
    )
    reference = load_exported(dcnv2_export)
    kernels = [k.detach().numpy() for k in reference.interaction.cross.kernels]
    rank = budget or max(_numpy_truncation(k, energy)[0] for k in kernels)
    applied = json.loads((out / "compression.json").read_text())["applied"]["low_rank"]
    assert applied["ranks"] == {"low_rank": rank} and rank < 48
    assert all(layer["energy_kept"] >= (energy if budget is None else 0) - 1e-9 for layer in applied["layers"].values())
    model = load_exported(out)
    cross = model.interaction.cross
    with torch.no_grad():
        for i, kernel in enumerate(kernels):
            truncated = _numpy_truncation(kernel, rank=rank)[1]
            np.testing.assert_allclose((cross.W_kernels[i] @ cross.V_kernels[i]).numpy(), truncated, atol=1e-5)
            reference.interaction.cross.kernels[i].copy_(torch.from_numpy(truncated))
        batch = _batch(features, dcnv2_export)
        torch.testing.assert_close(model(batch), reference(batch), rtol=0, atol=1e-5)
    if budget is not None:  # 2·N·r < N² weights per layer
        assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in reference.parameters())


def test_dcnv2_trained_low_rank_is_refactorised_at_most_at_its_rank(exported) -> None:
    """A model trained with ``low_rank: 10`` (torchrec's LowRankCrossNet): SVD of U V, the rank capped at 10."""
    export_dir, features = exported
    fmap = FeatureMap.load(export_dir)
    cfg = _dcnv2_config(low_rank=10)
    torch.manual_seed(2)
    model = build_ranker(fmap, cfg).eval()
    batch = _batch(features, export_dir)
    compressed, new_cfg, applied = compress_model(
        model, cfg, CompressConfig(low_rank=LowRankConfig(rank=20)), lambda c: build_ranker(fmap, c)
    )
    assert new_cfg.chosen_kwargs()["low_rank"] == 10
    assert {layer["current_rank"] for layer in applied["low_rank"]["layers"].values()} == {10}
    with torch.no_grad():
        torch.testing.assert_close(compressed(batch), model(batch), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("interaction", "cfg", "key"),
    [
        ("dlrm", CompressConfig(low_rank=LowRankConfig()), "low_rank"),
        ("transformer", CompressConfig(low_rank=LowRankConfig()), "low_rank"),
        ("dcnv2", CompressConfig(prune_last=True), "prune_last"),
        ("dlrm", CompressConfig(prune=PruneConfig(features="f", heads=1)), "prune"),
        ("dcnv2", CompressConfig(low_rank=LowRankConfig(rank_v=4)), "low_rank.rank_v"),
        ("hiformer", CompressConfig(low_rank=LowRankConfig(rank=4)), "low_rank.rank"),
    ],
)
def test_options_that_do_not_apply_name_the_key_and_the_model(interaction, cfg, key) -> None:
    with pytest.raises(ValueError, match=rf"^compress: {re.escape(key)} does not apply to a '{interaction}' model"):
        check_applies(cfg, interaction)


def test_cli_refuses_an_option_the_model_lacks_in_one_line(dcnv2_export, tmp_path: Path, capsys) -> None:
    from pipelines.cli import main

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"low_rank": {"rank_k": 4}, "tracking": False}))
    assert main(["compress", "--model", str(dcnv2_export), "--config", str(config), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err == "ranker: error: compress: low_rank.rank_k does not apply to a 'dcnv2' model, only to hiformer\n"
    assert not (tmp_path / "o").exists()


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


def _naive_row_quantised(w: torch.Tensor, bits: int | None) -> torch.Tensor:
    """Row-wise N-bit quantise + dequantise written from fbgemm's description: bias = fp16(row min), scale =
    fp16((max - bias) / (2^bits - 1)), q = round((w - bias) / scale) clamped; fp16 storage when ``bits`` is None."""
    if bits is None:
        return w.half().float()
    levels = 2**bits - 1
    lo = w.min(1, keepdim=True).values.half().float()
    scale = ((w.max(1, keepdim=True).values - lo) / levels).half().float()
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return torch.clamp(torch.round((w - lo) * (1.0 / scale)), 0, levels) * scale + lo


def _padded_table_bytes(model: torch.nn.Module, dtype: str) -> int:
    """Table bytes by hand: rows x (row payload + fp16 scale/bias for int rows) rounded up to 16 bytes."""
    total = 0
    for bag in model.sparse_arch.ebc.embedding_bags.values():
        rows, dim = bag.weight.shape
        payload = {"float32": 4 * dim, "float16": 2 * dim, "int8": dim + 4, "int4": dim // 2 + 4}[dtype]
        total += rows * (payload if dtype == "float32" else -(-payload // 16) * 16)
    return total


@pytest.mark.parametrize(("dtype", "bits"), [("float16", None), ("int8", 8), ("int4", 4)])
def test_quantised_tables_equal_a_naive_dequantisation(exported, tmp_path: Path, dtype: str, bits: int | None) -> None:
    export_dir, features = exported
    out = tmp_path / dtype
    manifest = compress_export(export_dir, CompressConfig(embedding_dtype=dtype), out)
    float_model = load_exported(export_dir)
    sizes = manifest["results"]["applied"]["embedding_bytes"]
    assert sizes == {"before": _padded_table_bytes(float_model, "float32"),
                     "after": _padded_table_bytes(float_model, dtype)}  # fmt: skip
    quantised = load_exported(out)  # a fresh load of the saved export (int4 rows travel as plain uint8)
    with torch.no_grad():
        for bag in float_model.sparse_arch.ebc.embedding_bags.values():
            bag.weight.copy_(_naive_row_quantised(bag.weight, bits))
        batch = _batch(features, export_dir, 64)
        torch.testing.assert_close(quantised(batch), float_model(batch), rtol=0, atol=1e-5)
    if dtype == "int8":  # the served program: torch + fbgemm_gpu (serving.json "requires"), no training code
        _check_served(out, features, tmp_path, (9,))


@pytest.mark.parametrize("dim", [16, 64])
def test_int4_tables_shrink_with_the_row_size(exported, dim: int) -> None:
    """Rows pad to 16 bytes: at D = 16 int8 is no smaller than fp16, at D = 64 int4 is > 3.5x smaller than fp32."""
    from ranker.compress import embedding_bytes, quantize_tables

    fmap = FeatureMap.load(exported[0])
    sizes = {}
    for dtype in ("float32", "float16", "int8", "int4"):
        model = build_ranker(fmap, ModelConfig(embedding_dim=dim)).eval()
        sizes[dtype] = embedding_bytes(quantize_tables(model, dtype) if dtype != "float32" else model)
        assert sizes[dtype] == _padded_table_bytes(model if dtype == "float32" else build_ranker(
            fmap, ModelConfig(embedding_dim=dim)), dtype)  # fmt: skip
    if dim == 16:
        assert sizes["int8"] == sizes["float16"]
    else:
        assert sizes["float32"] / sizes["int4"] > 3.5 and sizes["int8"] < sizes["float16"]


def _zero_removed(model: torch.nn.Module, report: dict) -> torch.nn.Module:
    """The unpruned model with removed heads' output-projection rows and removed FFN units' fc2 rows zeroed: the
    function the pruned model must compute (a reference written without the pruning's index gathers)."""
    with torch.no_grad():
        for layer, kept in zip(model.interaction.layers, report["layers"], strict=True):
            heads = layer.num_heads
            out_w = layer.out.weight  # (H·d_v, D) shared or (Q, H·d_v, D) per token
            width = out_w.shape[-2] // heads
            for h in set(range(heads)) - set(kept["kept_heads"]):
                out_w[..., h * width : (h + 1) * width, :] = 0
            fc2 = layer.ffn.fc2.weight  # (hidden, D) shared or (Q, hidden, D) per token
            per_token = kept["kept_units"] if fc2.dim() == 3 else [kept["kept_units"]]
            for t, units in enumerate(per_token):
                removed = sorted(set(range(fc2.shape[-2])) - set(units))
                (fc2[t] if fc2.dim() == 3 else fc2)[removed] = 0
    return model


@pytest.mark.parametrize("interaction", ["hiformer", "hetero_attention", "transformer"])
def test_structured_pruning_equals_zeroing_the_removed_units(exported, interaction: str) -> None:
    from ranker.structured_prune import importance, prune_structured

    export_dir, features = exported
    fmap = FeatureMap.load(export_dir)
    kwargs = {"num_layers": 2, "num_heads": 4, "ffn_hidden": 12, "prune_last": True}
    cfg = ModelConfig(embedding_dim=8, interaction=interaction, interaction_kwargs={interaction: kwargs})
    torch.manual_seed(3)
    model = build_ranker(fmap, cfg).eval()
    batch = _batch(features, export_dir, 48)
    scores = importance(model, [batch])
    pruned, new_cfg, report = prune_structured(model, cfg, lambda c: build_ranker(fmap, c), scores, 2, 5)
    assert new_cfg.chosen_kwargs()["num_heads"] == 2 and new_cfg.chosen_kwargs()["ffn_hidden"] == 5
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(pruned(batch), _zero_removed(model, report)(batch), rtol=0, atol=1e-5)
    # Keeping everything is the identity.
    torch.manual_seed(3)
    original = build_ranker(fmap, cfg).eval()
    same, _, _ = prune_structured(original, cfg, lambda c: build_ranker(fmap, c), scores, 4, 12)
    with torch.no_grad():
        torch.testing.assert_close(same(batch), original(batch), rtol=0, atol=1e-6)


def test_importance_finds_a_dead_head(exported) -> None:
    from ranker.structured_prune import importance, prune_structured

    export_dir, features = exported
    fmap = FeatureMap.load(export_dir)
    cfg = ModelConfig(embedding_dim=8, interaction_kwargs={"hiformer": {"num_layers": 1, "num_heads": 2}})
    model = build_ranker(fmap, cfg).eval()
    with torch.no_grad():
        model.interaction.layers[0].out.weight[:4] = 0  # head 0 (d_v = 4) no longer reaches the output
    batch = _batch(features, export_dir, 64)
    head_scores, _ = importance(model, [batch])
    assert head_scores[0][0] == 0 and head_scores[0][1] > 0
    _, _, report = prune_structured(model, cfg, lambda c: build_ranker(fmap, c), (head_scores, _), 1, None)
    assert report["layers"][0]["kept_heads"] == [1]


def test_pruned_and_finetuned_export_loads_and_serves(exported, tmp_path: Path) -> None:
    export_dir, features = exported
    cfg = CompressConfig(
        prune=PruneConfig(features=str(features), heads=1, ffn_hidden=8, batches=2, batch_size=64),
        finetune=FinetuneConfig(features=str(features), steps=5, batch_size=64),
    )
    out = tmp_path / "pruned"
    manifest = compress_export(export_dir, cfg, out)
    applied = manifest["results"]["applied"]
    assert applied["prune"]["heads"] == 1 and len(applied["prune"]["layers"]) == 2
    assert applied["parameters_after"] < applied["parameters_before"]
    kwargs = json.loads((out / "model_config.json").read_text())["interaction_kwargs"]["hiformer"]
    assert (kwargs["num_heads"], kwargs["ffn_hidden"], kwargs["head_dim"]) == (1, 8, 4)  # d_k = 8 / 2 kept
    _check_served(out, features, tmp_path, (5,))  # loads (load_exported) and serves in a fresh process


def test_frozen_tower_served_program_holds_item_embeddings_never_photos_or_tower(tmp_path: Path) -> None:
    """A frozen image tower's served program: the catalogue embeddings are in it, the tower and the photos are not;
    it scores in a process that cannot import the training code (nor vision_towers), equal to the training-side
    model and to a model that runs the tower itself on the photos."""
    from dataclasses import replace

    from features.images import load_images
    from ranker.build import VisionConfig
    from tests.helpers import build_tiny_export
    from vision_towers import create_tower
    from vision_towers.pretrain import save_checkpoint

    torch.manual_seed(5)
    overrides = {"depths": [1, 1, 1, 1]}
    tower = create_tower("convformer_fm", num_classes=0, **overrides).eval()
    save_checkpoint(tower, "convformer_fm", tmp_path / "tower.pt", overrides)
    vision = VisionConfig(tower="convformer_fm", frozen=True, pretrained=str(tmp_path / "tower.pt"), tokens=2)
    export_dir, features = build_tiny_export(tmp_path / "tiny", vision)
    out = tmp_path / "served"
    compress_export(export_dir, CompressConfig(tracking=False), out)

    program = torch.export.load(out / "serve" / "model.pt2")
    tensors = {**program.state_dict, **program.constants}
    photos = np.asarray(load_images(features))
    assert not any("tower" in name for name in tensors)
    tower_shapes = {tuple(p.shape) for p in tower.parameters() if p.dim() > 1}
    assert not tower_shapes & {tuple(t.shape) for t in tensors.values()}
    assert not any(t.dtype == torch.uint8 or photos.shape[-2:] == tuple(t.shape[-2:]) for t in tensors.values())
    table = np.load(export_dir / "item_embeddings.npy")
    np.testing.assert_array_equal(tensors["model.vision_arch.item_embeddings"].numpy(), table)
    tower_bytes = sum(p.numel() * p.element_size() for p in tower.parameters())
    assert 5 * (out / "serve" / "model.pt2").stat().st_size < tower_bytes + photos.nbytes

    served = _check_served(out, features, tmp_path, (40,))  # == load_exported(out), the training-side model
    batch = _batch(features, out, 40)
    assert (batch.image_index >= 0).all()  # every item of the tiny data has a photo in the catalogue: all warm
    # Independent reference: the same weights with the tower run on each batch's photos (a fine-tuned-tower model).
    cfg = from_dict(ModelConfig, json.loads((out / "model_config.json").read_text()))
    live = build_ranker(FeatureMap.load(out), replace(cfg, vision=replace(vision, frozen=False)), photos).eval()
    missing, unexpected = live.load_state_dict(load_exported(out).state_dict(), strict=False)
    assert not unexpected and missing and all(name.startswith("vision_arch.tower.") for name in missing)
    with torch.no_grad():
        np.testing.assert_allclose(served[40], live(batch).numpy(), rtol=0, atol=1e-5)
