"""Cold items from images (issue 13, section 4): what the image towers know, and image-mapped item embeddings.

Two measurements on a fashion-clicks log and no-image ranker runs trained on it (e.g. ``benchmarks/
learning_curve.py``'s ``r300000-x1/hiformer-s*``):

1. **Probe.** How much of the generator's visual score ``v_i`` (the click term only the photo reveals,
   ``visual_weight * v_i`` in the true logit, docs/fashion_clicks.md; recomputed from the photos and the manifest's
   ``visual_projection``, analysis only like ``true_p``) each image representation holds: ridge R^2 on held-out
   items (80/20 split of the catalogue, seed 0) from a frozen pretrained tower's embedding, the same tower at random
   initialisation, and the raw pixels.
2. **Image-mapped item embeddings** (the meta-embedding / DropoutNet idea, without retraining the ranker): on the
   items that have their own row in the trained item table (seen at least ``min_count`` times in training), fit a
   map from the image representation to that row (ridge, or a one-hidden-layer MLP); then, for every test row whose
   item has no row of its own (cold items, and rare warm items, which share the out-of-vocabulary row), replace the
   item token by the mapped embedding and score with the unchanged model. Reported: the map's held-out R^2, test
   AUC overall / cold / warm, and the cold AUC change with its paired request-level bootstrap interval
   (``pipelines.metrics.compare`` against the run's own test predictions), and the share of the gap to the
   observable cold ceiling (i) that it closes. ``--click-epochs N`` adds, per representation, a map trained on the
   frozen ranker's click loss instead of the rows (:func:`click_map`, the meta-embedding idea); ``--click-only``
   tries only those.

Usage::

    python benchmarks/studies/cold_items.py --data /work/lc/data-r300000-x1 \\
        --runs /work/lc/runs/r300000-x1/hiformer-s0 /work/lc/runs/r300000-x1/hiformer-s1 \\
        --tower-checkpoint runs/towers/caformer_fm.pt
    python benchmarks/studies/cold_items.py --data /work/lc/data-r1000000-x1 --runs RUN [RUN ...] \\
        --click-only --click-epochs 2 --out cold_items_click_1m
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from sklearn.linear_model import RidgeCV
from sklearn.neural_network import MLPRegressor

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.features_bench import machine  # noqa: E402
from benchmarks.runs import cli  # noqa: E402
from benchmarks.runs import train_and_evaluate as trained  # noqa: E402
from benchmarks.towers_common import STUDIES, write_results  # noqa: E402
from features.datasets.fashion_clicks import standardise_within_class, visual_stats  # noqa: E402
from features.loader import RankLoader  # noqa: E402
from features.processor import FeatureMap, processed_files  # noqa: E402
from features.schema import OOV_ID  # noqa: E402
from pipelines.metrics import EvalConfig, compare  # noqa: E402
from pipelines.metrics import auc as metrics_auc  # noqa: E402
from ranker.build import VisionConfig, build_tower, cached_item_embeddings  # noqa: E402
from ranker.export import load_exported  # noqa: E402
from ranker.model import Ranker  # noqa: E402
from vision_towers import prepare_images  # noqa: E402

ITEM_FEATURE = "item"
ALPHAS = np.logspace(-3, 4, 15)


def visual_score(raw: Path) -> np.ndarray:
    """The generator's ``v_i`` per item id, recomputed from the photos (within-class standardised twice)."""
    manifest = json.loads((raw / "manifest.json").read_text())["results"]
    items = pl.read_parquet(raw / "items.parquet").sort("item_id")
    photos = np.load(raw / "images.npy")[items["image_index"].to_numpy()]
    classes = items["true_class"].to_numpy()
    z = standardise_within_class(visual_stats(photos), classes)
    return standardise_within_class(z @ np.asarray(manifest["effects"]["visual_projection"]), classes)


def representations(features: Path, tower: str, checkpoint: Path | None) -> dict[str, np.ndarray]:
    """Item id -> image representation (``n_items x De``), per source."""
    items = pl.read_parquet(features / "items.parquet").sort("item_id")
    index = items["image_index"].to_numpy()
    out = {"raw pixels (784)": np.load(features / "images.npy")[index].reshape(len(index), -1) / 255.0}
    sources = {f"{tower} random init": VisionConfig(tower=tower, frozen=True)}
    if checkpoint is not None:
        sources[f"{tower} pretrained (classes)"] = VisionConfig(tower=tower, frozen=True, pretrained=str(checkpoint))
    for name, cfg in sources.items():
        out[name] = cached_item_embeddings(cfg, features, seed=0)[index]
    return out


def held_out_r2(fit: Callable[[np.ndarray, np.ndarray], Any], x: np.ndarray, y: np.ndarray, seed: int = 0) -> float:
    """R^2 (pooled over output columns) on a held-out 20% of the rows of a model fitted on the other 80%."""
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.8 * len(x))
    train, test = order[:cut], order[cut:]
    pred = fit(x[train], y[train]).predict(x[test]).reshape(len(test), -1)
    truth = y[test].reshape(len(test), -1)
    return float(1.0 - ((pred - truth) ** 2).sum() / ((truth - truth.mean(axis=0)) ** 2).sum())


def ridge(x: np.ndarray, y: np.ndarray) -> RidgeCV:
    return RidgeCV(alphas=ALPHAS).fit(x, y)


def mlp(x: np.ndarray, y: np.ndarray) -> MLPRegressor:
    model = MLPRegressor(hidden_layer_sizes=(256,), alpha=1e-3, max_iter=300, early_stopping=True, random_state=0)
    return model.fit(x, y)


MAPS: dict[str, Callable[[np.ndarray, np.ndarray], Any]] = {"ridge": ridge, "mlp": mlp}


def tower_map(
    features: Path, cfg: VisionConfig, ids: np.ndarray, targets: np.ndarray, epochs: int, seed: int = 0
) -> tuple[np.ndarray, float]:
    """The tower (from ``cfg``'s weights) plus a linear head, trained end to end to regress the item-table rows of
    80% of the items with a row (Adam, MSE, ``epochs`` passes); returns its ``n_items x D`` predictions for the whole
    catalogue and its R^2 on the other 20%. This is "pretraining the tower on the warm items' click behaviour": the
    rows are what the ranker learned about each item from its clicks."""
    items = pl.read_parquet(features / "items.parquet").sort("item_id")
    photos = np.load(features / "images.npy")[items["image_index"].to_numpy()]
    torch.manual_seed(seed)
    tower = build_tower(cfg)
    pixels = prepare_images(photos, int(tower.in_chans), int(tower.img_size))  # (n_items, C, H, W)
    net = torch.nn.Sequential(tower, torch.nn.Linear(int(tower.embed_dim), targets.shape[1]))
    order = np.random.default_rng(seed).permutation(len(ids))
    cut = int(0.8 * len(ids))
    train, test = ids[order[:cut]], ids[order[cut:]]
    y = torch.zeros(len(photos), targets.shape[1])
    y[torch.from_numpy(ids)] = torch.from_numpy(targets.astype(np.float32))
    scale = y[torch.from_numpy(train)].std(dim=0)  # regress standardised columns, so every dimension counts
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        for batch in torch.from_numpy(train)[torch.randperm(len(train), generator=generator)].split(128):
            loss = ((net(pixels[batch]) - y[batch]) / scale).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()
    with torch.no_grad():
        table = torch.cat([net(chunk) for chunk in pixels.split(1024)]).numpy()
    truth = y[torch.from_numpy(test)].numpy()
    r2 = 1.0 - ((table[test] - truth) ** 2).sum() / ((truth - truth.mean(axis=0)) ** 2).sum()
    return table, float(r2)


def item_token(model: Ranker) -> tuple[int, torch.Tensor]:
    """(position of the item token among the model's tokens, the item table ``rows x D``)."""
    dense = model.dense_arch.num_tokens if model.dense_arch else 0
    table = model.sparse_arch.ebc.embedding_bags[f"t_{ITEM_FEATURE}"].weight
    return dense + model.sparse_arch.feature_names.index(ITEM_FEATURE), table


def click_map(
    model: Ranker, features: Path, x: np.ndarray, ids: np.ndarray, epochs: int, seed: int = 0
) -> tuple[np.ndarray, float]:
    """A map from the image representation to the item token, trained on the frozen ranker's click loss (the
    meta-embedding idea): on training rows of 80% of the items with a row, the item token is replaced by
    ``OOV row + g(x_item)`` (g: one hidden layer of 64, last layer zero-initialised, so training starts from the
    model's cold-item behaviour) and only g learns, by the rows' weighted log loss. The other 20% of those items
    stand in for cold ones: their training rows, scored through g, pick the best epoch by AUC. Returns the
    ``n_items x D`` table of mapped tokens and that held-out-item AUC."""
    fmap = FeatureMap.load(features)
    position, table = item_token(model)
    oov = table[OOV_ID].detach()  # (D,)
    model.eval().requires_grad_(False)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    inputs = torch.from_numpy(((x - mean) / std).astype(np.float32))  # (n_items, De), standardised per column
    order = np.random.default_rng(seed).permutation(ids)
    cut = int(0.8 * len(order))
    role = torch.zeros(len(x), dtype=torch.int8)  # 0: not used, 1: fits g, 2: held out
    role[torch.from_numpy(order[:cut])], role[torch.from_numpy(order[cut:])] = 1, 2
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 64), torch.nn.ReLU(), torch.nn.Linear(64, oov.numel()))
    torch.nn.init.zeros_(net[-1].weight)
    torch.nn.init.zeros_(net[-1].bias)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    files = processed_files(features, "train")

    def rows(batch: Any, which: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        keep = (role[batch.item_ids.clamp(min=0)] == which) & (batch.item_ids >= 0) & (batch.weights > 0)
        with torch.no_grad():
            tokens = model.tokens(batch)[keep]  # (b, T, D)
        tokens[:, position] = oov + net(inputs[batch.item_ids[keep]])
        return model.score_tokens(tokens)[:, 0], batch.labels[keep, 0], batch.weights[keep]

    best: tuple[float, dict[str, torch.Tensor]] = (-1.0, {})
    for epoch in range(epochs):
        net.train()
        for batch in RankLoader(files, fmap, 1024, shuffle=True, seed=seed + epoch, mode="train", prefetch=0):
            logits, labels, weights = rows(batch, 1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, weight=weights)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        net.eval()
        scores, truth = [], []
        with torch.no_grad():
            for batch in RankLoader(files, fmap, 4096, mode="eval", prefetch=0):
                logits, labels, _ = rows(batch, 2)
                scores.append(logits)
                truth.append(labels)
        auc = float(metrics_auc(torch.cat(scores).numpy(), torch.cat(truth).numpy()))
        print(f"[cold] click map epoch {epoch + 1}: held-out items' training-row AUC {auc:.4f}", flush=True)
        if auc > best[0]:
            best = (auc, {k: v.clone() for k, v in net.state_dict().items()})
    net.load_state_dict(best[1])
    with torch.no_grad():
        return (oov + net(inputs)).numpy(), best[0]


def item_rows(features: Path) -> tuple[np.ndarray, np.ndarray]:
    """(item ids, their rows in the item table) of the items with a row of their own."""
    vocab = pl.read_parquet(features / "vocab" / f"{ITEM_FEATURE}.parquet")
    return np.array(vocab["value"].to_numpy()), np.array(vocab["id"].to_numpy())  # writable copies, for torch


def mapped_predictions(model: Ranker, features: Path, table: np.ndarray, out: Path) -> dict[str, Any]:
    """Test predictions of an exported ``model`` with the item token of out-of-vocabulary rows replaced by
    ``table[item_id]`` (``n_items x D``); written to ``out`` in ``ranker evaluate``'s predictions format."""
    fmap = FeatureMap.load(features)
    position, _ = item_token(model)
    mapped = torch.from_numpy(table.astype(np.float32))
    loader = RankLoader(processed_files(features, "test"), fmap, 4096, mode="eval")
    parts, replaced = [], 0
    with torch.no_grad():
        for batch in loader:
            ids = batch.sparse[ITEM_FEATURE].values()
            assert ids.numel() == batch.batch_size, "the item feature has one id per row"
            oov = ids == OOV_ID
            tokens = model.tokens(batch)  # (B, T, D)
            tokens[oov, position] = mapped[batch.item_ids[oov]]
            replaced += int(oov.sum())
            scores = torch.sigmoid(model.score_tokens(tokens))[:, 0]
            keep = batch.weights > 0
            parts.append(
                pl.DataFrame(
                    {
                        "group_id": batch.group_ids[keep].numpy(),
                        "item_id": batch.item_ids[keep].numpy(),
                        "label_click": batch.labels[keep, 0].numpy().astype(np.int8),
                        "score_click": scores[keep].numpy(),
                        "is_cold": batch.is_cold[keep].numpy(),
                    }
                )
            )
    pl.concat(parts).write_parquet(out)
    return {"rows_replaced": replaced}


def scoped(result: dict[str, Any], scope: str, key: str) -> Any:
    section = result["overall"] if scope == "overall" else result["cold_warm"][scope]
    return section["tasks"]["click"]["metrics"]["auc"][key]


def candidate_tables(
    features: Path, reps: dict[str, np.ndarray], towers: dict[str, VisionConfig], weight: np.ndarray, epochs: int
) -> Iterator[tuple[str, str, np.ndarray, float]]:
    """(representation, map, ``n_items x D`` mapped table, held-out R^2) of every map tried.

    Each map is tried as fitted ("→ row") and centred on the out-of-vocabulary row ("OOV + Δ": that row plus the
    map's deviation from its mean over the fitted items). The fitted map predicts rows like the warm items', whose
    level includes their popularity; the OOV row was trained on rare items, whose level is a cold item's. Towers
    are fine-tuned only with ``epochs`` > 0."""
    ids, rows = item_rows(features)
    targets, oov = weight[rows], weight[OOV_ID]

    def both(
        rep_name: str, map_name: str, table: np.ndarray, r2: float
    ) -> Iterator[tuple[str, str, np.ndarray, float]]:
        yield rep_name, f"{map_name} → row", table, r2
        yield rep_name, f"{map_name}, OOV + Δ", oov + table - table[ids].mean(axis=0), r2

    for rep_name, x in reps.items():
        for map_name, fit in MAPS.items():
            if map_name == "mlp" and x.shape[1] > 256:
                continue  # the MLP on raw pixels over-fits a few thousand items; ridge stands for it
            yield from both(rep_name, map_name, fit(x[ids], targets).predict(x), held_out_r2(fit, x[ids], targets))
    for name, cfg in towers.items():
        if epochs > 0:
            yield from both(
                name, f"tower fine-tuned ({epochs} epochs)", *tower_map(features, cfg, ids, targets, epochs)
            )


def substitution(
    run: Path, features: Path, reps: dict[str, np.ndarray], towers: dict[str, VisionConfig], ceiling_cold: float,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:  # fmt: skip
    """Every map tried, on one run."""
    model = load_exported(run / "export")  # loaded once: every map is scored with this same model
    _, weight = item_token(model)  # (rows, D)
    rows_out = []
    tables: Iterator[tuple[str, str, np.ndarray, float]] = iter(())
    if not args.click_only:
        tables = candidate_tables(features, reps, towers, weight.detach().numpy(), args.epochs)
    if args.click_epochs > 0:
        ids = item_rows(features)[0]
        clicked = (
            (name, "click-trained, OOV + g", *click_map(model, features, x, ids, args.click_epochs))
            for name, x in reps.items()
        )
        tables = itertools.chain(tables, clicked)
    for rep_name, map_name, table, r2 in tables:
        out = run / f"cold_map-{len(rows_out)}.parquet"
        info = mapped_predictions(model, features, table, out)
        res = compare(run / "eval-test" / "predictions.parquet", out, config=EvalConfig(n_bootstrap=args.bootstrap))
        base_cold, new_cold = scoped(res, "cold", "a"), scoped(res, "cold", "b")
        rows_out.append(
            {
                "run": str(run),
                "representation": rep_name,
                "map": map_name,
                "map_r2_held_out_items": r2,
                **info,
                "auc": {
                    s: {"base": scoped(res, s, "a"), "new": scoped(res, s, "b")} for s in ("overall", "cold", "warm")
                },
                "cold_delta": {k: scoped(res, "cold", k) for k in ("delta", "ci_low", "ci_high")},
                "cold_gap_closed": (new_cold - base_cold) / (ceiling_cold - base_cold),
            }
        )
        print(f"[cold] {run.name} {rep_name} {map_name}: R2 {r2:.3f}, cold AUC {base_cold:.4f} -> {new_cold:.4f}")
    return rows_out


VISION = "{tower: caformer_fm, tokens: 2, frozen: true, pretrained: runs/towers/caformer_fm.pt}"
VARIANTS = {
    "image tokens": [f"model.vision={VISION}"],
    "image tokens + item id dropout 0.1": [f"model.vision={VISION}", "id_dropout={item: 0.1}"],
    "item id dropout 0.1, no image": ["id_dropout={item: 0.1}"],
}


def trained_variants(
    features: Path, base_runs: list[Path], work: Path, ceiling_cold: float, bootstrap: int
) -> list[dict[str, Any]]:
    """Each of ``VARIANTS`` trained like the no-image base run of the same seed (``configs/train/bench-fashion.yaml``,
    Hiformer, the base run's index = seed) with only the variant's keys added; cold AUC against that base run."""
    rows_out = []
    for seed, base in enumerate(base_runs):
        for name, sets in VARIANTS.items():
            run = work / f"{name.replace(' ', '_').replace('.', '')}-s{seed}"
            cmd = cli("train", "--config", "configs/train/bench-fashion.yaml", "--nproc", "1")
            for item in [f"features={features}", f"out_dir={run}", "model.interaction=hiformer", f"seed={seed}", *sets]:
                cmd += ["--set", item]
            train = trained(cmd, run, features, bootstrap)["train"]
            preds = "eval-test/predictions.parquet"
            res = compare(base / preds, run / preds, config=EvalConfig(n_bootstrap=bootstrap))
            base_cold, new_cold = scoped(res, "cold", "a"), scoped(res, "cold", "b")
            rows_out.append(
                {
                    "variant": name,
                    "seed": seed,
                    "base_run": str(base),
                    "run": str(run),
                    "train_command": train["command"],
                    "auc": {
                        s: {"base": scoped(res, s, "a"), "new": scoped(res, s, "b")}
                        for s in ("overall", "cold", "warm")
                    },
                    "cold_delta": {k: scoped(res, "cold", k) for k in ("delta", "ci_low", "ci_high")},
                    "cold_gap_closed": (new_cold - base_cold) / (ceiling_cold - base_cold),
                }
            )
            print(f"[cold] variant {name} s{seed}: cold AUC {base_cold:.4f} -> {new_cold:.4f}", flush=True)
    return rows_out


def _comparison_cells(r: dict[str, Any]) -> str:
    """AUC overall, warm, cold (base -> new), the cold delta with its interval and the gap closed, as table cells."""
    a, d = r["auc"], r["cold_delta"]
    cells = [f"{a[s]['base']:.4f} -> {a[s]['new']:.4f}" for s in ("overall", "warm", "cold")]
    cells += [f"{d['delta']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]", f"{100 * r['cold_gap_closed']:.1f}%"]
    return " " + " | ".join(cells) + " |"


def _maps_section(report: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## 2. Image-mapped item embeddings for items without their own row",
        "",
        "Map fitted from the representation to the trained item-table rows of the items that have one; applied to "
        "every test row on the out-of-vocabulary row (cold items and rare warm ones); the model is unchanged. "
        "Cold Δ: mapped minus the run's own test predictions, paired request-level bootstrap 95% interval; gap "
        "closed = Δ cold AUC / (ceiling (i) - base cold AUC). The click-trained map (`click_map`) is fitted on the "
        "frozen ranker's click loss instead of the rows; its fit column is the AUC of its held-out items' training "
        "rows scored through it.",
        "",
        "| run | representation | map | map fit (held-out items) | AUC overall | AUC warm | cold AUC base -> mapped "
        "| cold Δ [95% CI] | gap closed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["substitution"]:
        fit = r["map_r2_held_out_items"]
        fit_cell = f"AUC {fit:.3f}" if r["map"].startswith("click") else f"{fit:.3f}"
        head = f"| {Path(r['run']).name} | {r['representation']} | {r['map']} | {fit_cell} |"
        lines.append(head + _comparison_cells(r))
    lines += [
        "",
        "Mean gap closed over runs:",
        "",
        "| representation | map | mean gap closed | runs |",
        "|---|---|---|---|",
    ]
    for key, values in report["mean_gap_closed"].items():
        lines.append(f"| {key.split(' | ')[0]} | {key.split(' | ')[1]} | {100 * values['mean']:.1f}% | {values['n']} |")
    return lines


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Cold items from images: what the towers know, and image-mapped item embeddings",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Data: `{report['data']}` ({report['n_items']:,} items, {report['n_items_with_row']:,} with their own "
        f"item-table row); observable cold ceiling (i) {report['ceiling_cold']:.4f}, Bayes cold "
        f"{report['bayes_cold']:.4f}.",
        "",
        "## 1. Does the representation hold the visual click term?",
        "",
        "Ridge R^2 of the generator's visual score `v_i` on held-out items (80/20, seed 0); `v_i` has weight 1.5 in "
        "the true logit and is the part of an item's appeal only its photo reveals.",
        "",
        "| representation | dims | R^2 of v_i |",
        "|---|---|---|",
        *(f"| {p['representation']} | {p['dims']} | {p['r2_visual_score']:.3f} |" for p in report["probe"]),
    ]
    if report["substitution"]:
        lines += _maps_section(report)
    if report["variants"]:
        lines += [
            "",
            "## 3. Trained with image tokens and item-id dropout",
            "",
            "Hiformer trained like the no-image run of the same seed with only these keys added (frozen "
            "class-pretrained caformer_fm, 2 image tokens; `id_dropout: {item: 0.1}`: a training row's item id is "
            "the out-of-vocabulary id with probability 0.1, so the model learns to score items without an "
            "embedding of their own). Δ against the no-image run, paired request-level bootstrap 95% interval.",
            "",
            "| variant | seed | AUC overall | AUC warm | cold AUC base -> variant | cold Δ [95% CI] | gap closed |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in report["variants"]:
            lines.append(f"| {r['variant']} | {r['seed']} |" + _comparison_cells(r))
        for name in VARIANTS:
            gaps = [r["cold_gap_closed"] for r in report["variants"] if r["variant"] == name]
            if gaps:
                lines.append(f"| **{name}: mean** | | | | | | **{100 * statistics.mean(gaps):.1f}%** |")
    m = report["machine"]
    lines += ["", f"Machine: {m['nproc']} cores, torch {m['torch']}, {m['date_utc']}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with raw/ and features/ of one log")
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="trained no-image runs on that log")
    parser.add_argument("--tower", default="caformer_fm")
    parser.add_argument("--tower-checkpoint", type=Path, help="class-pretrained weights of --tower")
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=0, help="fine-tuning passes of the tower map (0: not tried)")
    parser.add_argument("--click-epochs", type=int, default=0, help="passes of the click-trained maps (0: not tried)")
    parser.add_argument("--click-only", action="store_true", help="part 2: only the click-trained maps")
    parser.add_argument("--work", type=Path, help="where the trained variants go (part 3; skipped without it)")
    parser.add_argument("--skip-maps", action="store_true", help="run part 3 only")
    parser.add_argument("--out", default="cold_items", help="results name under benchmarks/results/studies/")
    args = parser.parse_args()
    torch.manual_seed(0)
    raw, features = args.data / "raw", args.data / "features"
    manifest = json.loads((raw / "manifest.json").read_text())["results"]
    reps = representations(features, args.tower, args.tower_checkpoint)
    towers = {f"{args.tower} random init": VisionConfig(tower=args.tower, frozen=True)}
    if args.tower_checkpoint is not None:
        pretrained = VisionConfig(tower=args.tower, frozen=True, pretrained=str(args.tower_checkpoint))
        towers[f"{args.tower} pretrained (classes)"] = pretrained
    v = visual_score(raw)
    probe = [
        {"representation": k, "dims": x.shape[1], "r2_visual_score": held_out_r2(ridge, x, v)} for k, x in reps.items()
    ]
    for p in probe:
        print(f"[cold] probe {p['representation']}: R2 of v_i {p['r2_visual_score']:.3f}", flush=True)
    ceiling = manifest["observable_auc_known_users"]["cold"]
    rows = (
        []
        if args.skip_maps
        else [r for run in args.runs for r in substitution(run, features, reps, towers, ceiling, args)]
    )
    variants = trained_variants(features, args.runs, args.work, ceiling, args.bootstrap) if args.work else []
    groups: dict[str, list[float]] = {}
    for r in rows:
        groups.setdefault(f"{r['representation']} | {r['map']}", []).append(r["cold_gap_closed"])
    report = {
        "command": "python benchmarks/studies/cold_items.py " + " ".join(sys.argv[1:]),
        "data": str(args.data),
        "n_items": len(v),
        "n_items_with_row": len(item_rows(features)[0]),
        "ceiling_cold": ceiling,
        "bayes_cold": manifest["bayes_auc"]["cold"],
        "probe": probe,
        "substitution": rows,
        "variants": variants,
        "mean_gap_closed": {k: {"mean": statistics.mean(g), "n": len(g)} for k, g in groups.items()},
        "machine": machine(),
    }
    write_results(args.out, report, markdown(report), STUDIES)
    print(f"wrote {STUDIES / args.out}.json and .md")


if __name__ == "__main__":
    main()
