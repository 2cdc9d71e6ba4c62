"""The ``ranker`` command line.

Typical session::

    ranker data build movielens-100k            # real ratings -> data/raw/movielens-100k
    ranker data build fashion-clicks --rows 200000 --seed 0
    ranker features build data/raw/movielens-100k/schema.yaml   # -> data/features/movielens-100k
    ranker train --config configs/train/movielens-hiformer.yaml --nproc 2
    ranker evaluate --model runs/movielens-hiformer/export --features data/features/movielens-100k
    ranker compare runs/b/eval-test/predictions.parquet runs/b-vs-a --baseline runs/a/eval-test/predictions.parquet
    ranker compress --model runs/movielens-hiformer/export --config configs/compress/hiformer.yaml --out runs/m-c
    ranker score --model runs/movielens-hiformer/export --input 'new/*.parquet' --out runs/scores
    ranker run configs/pipeline/demo-movielens.yaml   # every step, raw data to a promoted model and scores
    ranker demo                                 # the whole default job (what `make demo` runs)

Every step writes an output directory with a ``manifest.json`` and is skipped when its inputs have not changed
(``--force`` re-runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

DEFAULT_DATA_DIR = Path(os.environ.get("RANKER_DATA", "data"))
DEFAULT_MODEL_NAME = "hiformer-ranker"  # registered model name of register/promote/rollback


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _cmd_data_list(args: argparse.Namespace) -> int:
    from pipelines.data import DATASETS

    for name in DATASETS:
        folder = args.data_dir / "raw" / name
        state = "built" if (folder / "manifest.json").exists() else "not built"
        print(f"{name:16s} {state:10s} {folder}")
    return 0


def _cmd_data_build(args: argparse.Namespace) -> int:
    from pipelines.data import build_dataset

    out = args.out or args.data_dir / "raw" / args.name
    manifest = build_dataset(
        args.name,
        out,
        rows=args.rows,
        seed=args.seed,
        force=args.force,
        progress=True,
        rows_per_user=args.rows_per_user,
        interaction_strength=args.interaction_strength,
    )
    print(f"{args.name}: {out} ({manifest.get('seconds', 0)} s)")
    _print_json(manifest.get("results", {}))
    return 0


def _features_out(args: argparse.Namespace) -> Path:
    if args.out:
        return args.out
    from features.schema import load_schema

    return args.data_dir / "features" / load_schema(args.schema).name


def _cmd_features_build(args: argparse.Namespace) -> int:
    from pipelines.build_features import build_features

    out = _features_out(args)
    manifest = build_features(args.schema, out, row_group_size=args.row_group_size, force=args.force)
    results = manifest["results"]
    source = results.get("source")
    reports = ({"source": source} if source else {}) | results["splits"]
    for split, rep in reports.items():
        counts = f"in {rep['rows_in']:>10,}  out {rep['rows_out']:>10,}  quarantined {rep['rows_quarantined']:,}"
        print(f"{split:6s} rows {counts}")
        for reason, count in rep["reasons"].items():
            print(f"         {count:,} x {reason}")
    for join in (source or {}).get("joins", []):
        print(f"join   {join['table']} on {join['key']} ({join['how']}): {join['rows_unmatched']:,} row(s) unmatched")
    if results["rows_quarantined"]:
        print(f"quarantined {results['rows_quarantined']:,} row(s) in total: {out / 'quarantine'}")
    for warning in (source or {}).get("warnings", []):
        print(f"ranker: warning: {warning}", file=sys.stderr)
    print(f"features: {out} ({manifest['seconds']} s)")
    return 0


def _split_schema(path: Path) -> Any:
    """The schema at ``path``, which must be in the files: form (a source: schema is staged by the build)."""
    from features.schema import load_schema

    schema = load_schema(path)
    if schema.source is not None:
        raise ValueError(f"{path}: a source: schema is joined and split by `ranker features build`, not fit/transform")
    return schema


def _cmd_features_fit(args: argparse.Namespace) -> int:
    from features.processor import fit

    out = _features_out(args)
    fmap = fit(_split_schema(args.schema), out)
    print(f"feature map: {out / 'feature_map.json'} ({fmap.train_rows:,} train rows)")
    return 0


def _cmd_features_transform(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from features.processor import transform

    schema = _split_schema(args.schema)
    out = _features_out(args)
    for split in args.split or [s for s in ("train", "valid", "test") if s in schema.files]:
        _print_json(asdict(transform(schema, out, split, row_group_size=args.row_group_size)))
    return 0


def _cmd_features_show(args: argparse.Namespace) -> int:
    from features.processor import FeatureMap

    fmap = FeatureMap.load(args.features)
    print(f"{fmap.schema_name}: {fmap.train_rows:,} train rows, hash {fmap.hash_algorithm} seed {fmap.hash_seed}")
    for s in fmap.sparse:
        print(f"  sparse {s.name:18s} {s.kind:6s} {s.encoding:8s} {s.num_embeddings:>9,} ids")
    for d in fmap.dense:
        print(f"  dense  {d.name:18s} {d.transform:8s} mean {d.mean:.4g} std {d.std:.4g}")
    for name, rate in fmap.positive_rate.items():
        print(f"  label  {name:18s} positive rate {rate:.4f}")
    if fmap.image_shape:
        print(f"  images {fmap.num_images:,} x {fmap.image_shape}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from pipelines.launch import launch_training

    return launch_training(
        args.config, args.nproc, args.set, args.resume, args.max_restarts,
        nnodes=args.nnodes, rdzv_endpoint=args.rdzv_endpoint, rdzv_id=args.rdzv_id, local_addr=args.local_addr,
    )  # fmt: skip


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from pipelines.evaluate import evaluate_model
    from pipelines.metrics import EvalConfig

    out = args.out or args.model.parent / f"eval-{args.split}"
    cfg = EvalConfig(ks=tuple(args.k or (5, 10)), n_bootstrap=args.bootstrap, seed=args.seed)
    manifest = evaluate_model(args.model, args.features, out, args.split, cfg, force=args.force)
    res = manifest["results"]
    for task, values in res["overall"].items():
        print(f"{task}: " + "  ".join(f"{k} {v:.4f}" for k, v in values.items() if isinstance(v, float)))
    shares = json.loads(Path(res["metrics_json"]).read_text())["data"].get("cold_share", {})
    if shares:
        print("cold rows (unseen in training): " + ", ".join(f"{e} {100 * v:.1f}%" for e, v in shares.items()))
    print(f"predictions: {res['predictions']}\nmetrics:     {res['metrics_json']}\nreport:      {res['report']}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from pipelines.metrics import EvalConfig
    from pipelines.report import run_comparison, run_evaluation

    for path in (args.predictions, args.baseline):
        if path is not None and not path.exists():  # before any output is written
            raise FileNotFoundError(f"{path}: predictions file not found")
    given = {"ks": args.ks, "min_slice_size": args.min_slice_size, "n_bootstrap": args.bootstrap, "seed": args.seed}
    cfg = EvalConfig(**{k: tuple(v) if k == "ks" else v for k, v in given.items() if v is not None})
    model_config = json.loads(args.model_config.read_text()) if args.model_config else None
    paths = run_evaluation(
        args.predictions, args.out_dir, tasks=args.tasks, slice_columns=args.slices, eval_config=cfg,
        model_config=model_config, data_version=args.data_version,
    )  # fmt: skip
    if args.baseline is not None:
        paths |= run_comparison(
            args.baseline, args.predictions, args.out_dir, tasks=args.tasks, slice_columns=args.slices, eval_config=cfg
        )
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def _add_compare_parser(sub: Any) -> None:
    # Unset evaluation options keep EvalConfig's defaults (see docs/evaluation.md); importing it here would load
    # numpy and polars for every `ranker` command.
    text = (
        "evaluate a predictions parquet (metrics.json, summary.md, report.html) and, with --baseline, compare it "
        "against the baseline's predictions on the same impressions (comparison.json, comparison.md, "
        "comparison.html: deltas B - A with paired bootstrap intervals)"
    )
    p = sub.add_parser("compare", help="compare two models' predictions (paired bootstrap); see docs/evaluation.md",
                       description=text)  # fmt: skip
    p.add_argument("predictions", type=Path, help="predictions parquet of the candidate (B), e.g. RUN/eval-test/...")
    p.add_argument("out_dir", type=Path, help="output folder")
    p.add_argument("--baseline", type=Path, default=None, help="predictions of the baseline (A), joined 1:1 on "
                   "(group_id, item_id): also write comparison.{json,md,html}")  # fmt: skip
    p.add_argument("--slice", dest="slices", action="append", default=[], help="slice column (repeatable)")
    p.add_argument("--task", dest="tasks", action="append", default=None, help="task (default: all)")
    p.add_argument("--ks", type=int, nargs="+", help="NDCG/Recall cut-offs (default 5 10)")
    p.add_argument("--min-slice-size", type=int, help="slices with fewer rows get counts only (default 1000)")
    p.add_argument("--bootstrap", type=int, help="bootstrap replicates, groups resampled (default 200)")
    p.add_argument("--seed", type=int, help="bootstrap seed (default 0)")
    p.add_argument("--data-version", default=None, help="shown in the report")
    p.add_argument("--model-config", type=Path, default=None, help="JSON file with the model config")
    p.set_defaults(func=_cmd_compare)


def _cmd_compress(args: argparse.Namespace) -> int:
    from common.config import parse_overrides
    from pipelines.compress import compress_export, load_compress_config

    cfg = load_compress_config(args.config, parse_overrides(args.set))
    manifest = compress_export(args.model, cfg, args.out, force=args.force)
    res = manifest["results"]
    print(f"compressed: {args.out} ({res['parameters']:,} parameters, model.pt {res['model_bytes']:,} bytes)")
    _print_json(res["applied"])
    if cfg.tracking:
        from pipelines import registry, tracking

        tracking.connect()
        print(f"model: {registry.ensure_logged(args.out)[1]}")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from pipelines.score import score

    manifest = score(args.model, args.input, args.out, args.nproc, args.batch_size, tuple(args.keep), args.force)
    res = manifest["results"]
    print(
        f"scored {res['rows_out']:,} rows of {len(res['inputs'])} file(s) with {res['model']['uri']} "
        f"({res['nproc']} process(es), {res['rows_per_s']:,.0f} rows/s)"
    )
    print(
        f"scores:   {args.out}/part-*.parquet ({', '.join(res['score_columns'])})\nmanifest: {args.out}/manifest.json"
    )
    return 0


# -- Registry: register, promote, rollback (pipelines.registry) ------------------------------------------------------


def _cmd_register(args: argparse.Namespace) -> int:
    from pipelines.registry import register_run

    version = register_run(args.run, args.name)
    print(f"registered {args.name} version {version} (alias challenger): models:/{args.name}/{version}")
    return 0


def _promote_config(args: argparse.Namespace) -> Any:
    from common.config import parse_overrides
    from pipelines.registry import load_promote_config

    return load_promote_config(args.config, parse_overrides(args.set))


def _cmd_promote(args: argparse.Namespace) -> int:
    from pipelines.registry import promote

    outcome = promote(args.name, _promote_config(args), args.version)
    if outcome.report is not None:
        print(f"gate report: {outcome.report}")
    if outcome.code:
        print(f"ranker: promote: {outcome.message}", file=sys.stderr)
    else:
        print(outcome.message)
    return outcome.code


def _cmd_rollback(args: argparse.Namespace) -> int:
    from pipelines.registry import rollback

    print(rollback(args.name, _promote_config(args)).message)
    return 0


def _add_registry_commands(sub: Any) -> None:
    name_help = f"registered model name (default: $RANKER_MODEL_NAME or {DEFAULT_MODEL_NAME})"
    default_name = os.environ.get("RANKER_MODEL_NAME", DEFAULT_MODEL_NAME)
    p = sub.add_parser(
        "register",
        help="log a run's export as an MLflow model (if not yet logged), register it, set alias challenger",
    )
    p.add_argument("run", type=Path, help="training run folder (RUN, holding export/) or an export folder")
    p.add_argument("--name", default=default_name, help=name_help)
    p.set_defaults(func=_cmd_register)
    for command, func, text in (
        ("promote", _cmd_promote, "run the promotion gate: challenger vs champion on a frozen holdout"),
        ("rollback", _cmd_rollback, "move alias champion back to previous"),
    ):
        p = sub.add_parser(command, help=text, description=text)
        p.add_argument("name", nargs="?", default=default_name, help=name_help)
        p.add_argument("--config", type=Path, help="gate config YAML (see configs/promote/default.yaml)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
        if command == "promote":
            p.add_argument("--version", type=int, help="version to promote (default: alias challenger)")
        p.set_defaults(func=func)


def _cmd_pretrain_tower(args: argparse.Namespace) -> int:
    import torch

    from vision_towers.eet import EETLoss
    from vision_towers.pretrain import evaluate, fmnist_subset, pretrain

    weights = {key: getattr(args, key) for key in _TRANSFER_OPTIONS if getattr(args, key) is not None}
    if weights and args.teacher is None:
        raise ValueError(f"{', '.join('--' + k.replace('_', '-') for k in weights)}: only with --teacher")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    tower = pretrain(
        args.name,
        args.out,
        n_train=args.n_train,
        epochs=args.epochs,
        seed=args.seed,
        teacher=args.teacher,
        transfer=EETLoss(**weights),
    )
    images, labels = fmnist_subset("test", args.n_eval, args.seed)
    print(f"{args.name}: Fashion-MNIST test accuracy {evaluate(tower, images, labels):.4f} on {args.n_eval} images")
    print(f"saved: {args.out}")
    return 0


# EETLoss arguments exposed by `ranker pretrain-tower --teacher` (defaults: EETLoss's, the released code's weights).
_TRANSFER_OPTIONS = {
    "ce_weight": (float, "weight of the cross-entropy on the clean image"),
    "mask_weight": (float, "weight of the cross-entropy on the teacher-masked image"),
    "cos_weight": (float, "weight of the cosine distillation between logits"),
    "kl_weight": (float, "weight of the temperature-KL distillation between logits"),
    "temperature": (float, "temperature of the KL term"),
    "mask_top": (int, "patches the teacher masks for the masked-image term"),
}


def _cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.demo import run_demo

    run_demo(args.data_dir, args.runs_dir, rows=args.rows, seed=args.seed, nproc=args.nproc)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from pipelines.job.run import run_from_cli

    try:
        run_from_cli(args.pipeline, args.set, args.start, args.until, args.force, args.verbose)
    except KeyboardInterrupt:
        print(f"ranker: interrupted; finished steps are kept: `ranker run {args.pipeline}` continues", file=sys.stderr)
        return 130
    return 0


def _add_run_parser(sub: Any) -> None:
    from pipelines.job import OPTIONAL, STEPS

    steps = ", ".join(STEPS)
    p = sub.add_parser(
        "run",
        help="the main job: " + " -> ".join(f"[{s}]" if s in OPTIONAL else s for s in STEPS),
        description="Runs every step of PIPELINE.yaml (see configs/pipeline/ and docs/pipeline.md), skipping the "
        "steps whose inputs and config are unchanged; an interrupted job continues where it stopped.",
    )
    p.add_argument("pipeline", type=Path, help="pipeline config YAML (see configs/pipeline/)")
    p.add_argument(
        "--from", dest="start", metavar="STEP", help=f"start at this step ({steps}); earlier ones must have run"
    )
    p.add_argument("--until", metavar="STEP", help="stop after this step")
    p.add_argument("--force", action="store_true", help="re-run the selected steps even if unchanged")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a pipeline key, e.g. train.nproc=1"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="show the steps' output instead of logging it")
    p.set_defaults(func=_cmd_run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ranker",
        description="Hiformer ranking pipeline: data -> features -> train -> evaluate.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="root of data/raw and data/features (default: %(default)s, or $RANKER_DATA)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="built-in data sets").add_subparsers(dest="action", required=True)
    p = data.add_parser("list", help="list built-in data sets and whether they are built")
    p.set_defaults(func=_cmd_data_list)
    p = data.add_parser("build", help="build a data set's raw parquet and schema.yaml")
    p.add_argument("name", choices=["movielens-100k", "fashion-clicks"])
    p.add_argument("--rows", type=int, default=200_000, help="fashion-clicks: number of rows (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="fashion-clicks: generator seed (default %(default)s)")
    p.add_argument(
        "--rows-per-user",
        type=int,
        help="fashion-clicks: average history length, n_users = rows // N (default 50; docs/fashion_clicks.md)",
    )
    p.add_argument(
        "--interaction-strength",
        type=float,
        help="fashion-clicks: multiplier of the segment x hour x category interaction, 0 = off (default 1)",
    )
    p.add_argument("--out", type=Path, help="output folder (default: DATA_DIR/raw/NAME)")
    p.add_argument("--force", action="store_true", help="rebuild even if an up-to-date build exists")
    p.set_defaults(func=_cmd_data_build)

    feats = sub.add_parser("features", help="fit and apply the feature pipeline").add_subparsers(
        dest="action", required=True
    )
    for action, func, text in (
        ("build", _cmd_features_build, "fit on train, then transform every split (resumable)"),
        ("fit", _cmd_features_fit, "fit vocabularies, hashes and dense statistics on the train split"),
        ("transform", _cmd_features_transform, "write processed parquet with a fitted feature map"),
    ):
        p = feats.add_parser(action, help=text, description=text)
        p.add_argument("schema", type=Path, help="schema YAML (e.g. data/raw/movielens-100k/schema.yaml)")
        p.add_argument("--out", type=Path, help="output folder (default: DATA_DIR/features/<schema name>)")
        p.add_argument("--row-group-size", type=int, default=65_536, help="rows per parquet row group")
        if action == "build":
            p.add_argument("--force", action="store_true", help="re-run even if the output is up to date")
        if action == "transform":
            p.add_argument("--split", action="append", choices=["train", "valid", "test"], help="split(s) to transform")
        p.set_defaults(func=func)
    p = feats.add_parser("show", help="summarise a fitted feature map")
    p.add_argument("features", type=Path, help="features folder holding feature_map.json")
    p.set_defaults(func=_cmd_features_show)

    p = sub.add_parser(
        "train",
        help="train a ranker with torchrun (DistributedModelParallel)",
        description="Launches `torchrun ... -m pipelines.train` with --nproc processes per node.",
    )
    p.add_argument("--config", type=Path, required=True, help="training config YAML (see configs/train/)")
    p.add_argument("--nproc", type=int, default=1, help="processes (ranks) on this node (default %(default)s)")
    p.add_argument("--nnodes", type=int, default=1, help="nodes taking part (multi-node needs --rdzv-endpoint)")
    p.add_argument("--rdzv-endpoint", default="", help="HOST:PORT of the rendezvous, the same on every node")
    p.add_argument("--rdzv-id", default="ranker", help="job id shared by the nodes of one run")
    p.add_argument(
        "--local-addr", default="", help="multi-node: this node's address as the others reach it (default: host name)"
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. epochs=1"
    )
    p.add_argument("--resume", action="store_true", help="continue from the run's newest intact checkpoint")
    p.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        help="restart the ranks up to N times after one fails, continuing from the last checkpoint (torchrun elastic)",
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="score a split with an exported model; write predictions, metrics.json, summary.md, report.html",
    )
    p.add_argument("--model", type=Path, required=True, help="export folder of a training run (RUN/export)")
    p.add_argument("--features", type=Path, required=True, help="features folder holding the processed split")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--out", type=Path, help="output folder (default: RUN/eval-SPLIT)")
    p.add_argument("--k", type=int, action="append", default=None, help="NDCG/Recall cut-off (repeatable)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap replicates for intervals")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--force", action="store_true", help="re-run even if the output is up to date")
    p.set_defaults(func=_cmd_evaluate)
    _add_compare_parser(sub)

    p = sub.add_parser(
        "compress",
        help="compress an export (prune, low-rank, fine-tune, bf16) into a new export with a served artefact",
    )
    p.add_argument("--model", type=Path, required=True, help="export folder of a training run (RUN/export)")
    p.add_argument("--config", type=Path, required=True, help="compression config YAML (see configs/compress/)")
    p.add_argument("--out", type=Path, required=True, help="output export folder")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--force", action="store_true", help="re-run even if the output is up to date")
    p.set_defaults(func=_cmd_compress)

    p = sub.add_parser(
        "score",
        help="score unlabeled raw parquet with an export or a registered model (streamed, resumable)",
        description="Writes DIR/part-*.parquet (key columns, score_<task>, model_uri, model_fingerprint) and "
        "DIR/manifest.json. Key columns: the feature map's group and item columns, then every --keep column.",
    )
    p.add_argument(
        "--model", required=True, help="export folder (RUN/export, RUN) or models:/NAME@ALIAS, models:/NAME/VERSION"
    )
    p.add_argument("--input", required=True, help="raw parquet: a glob (quote it), a file or a folder")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--nproc", type=int, default=1, help="processes splitting the input's row groups (default 1)")
    p.add_argument("--batch-size", type=int, default=8192, help="rows per forward pass (default %(default)s)")
    p.add_argument("--keep", action="append", default=[], metavar="COL", help="also copy this input column")
    p.add_argument("--force", action="store_true", help="re-run even if the output is up to date")
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser(
        "pretrain-tower",
        help="pretrain a vision tower on Fashion-MNIST classes (for a frozen or fine-tuned image tower), "
        "optionally distilled from a teacher tower (EET's discriminative transfer)",
    )
    p.add_argument("name", help="registered tower name (see vision_towers.list_towers())")
    p.add_argument("--out", type=Path, required=True, help="checkpoint path (.pt, weights only)")
    p.add_argument("--n-train", type=int, default=3000, help="training images (default %(default)s)")
    p.add_argument("--n-eval", type=int, default=1000, help="test images for the reported accuracy")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--teacher",
        type=Path,
        help="checkpoint of a pretrained EET ViT (vit_fm, vit_fm_teacher): train with EET's discriminative "
        "transfer instead of plain cross-entropy; the loss defaults to EET's released code, 0.1 (CE + masked CE) + "
        "1.0 cosine (docs/vision_towers.md)",
    )
    for key, (kind, text) in _TRANSFER_OPTIONS.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=kind, help=f"with --teacher: {text} (default: EETLoss's)")
    p.set_defaults(func=_cmd_pretrain_tower)

    _add_registry_commands(sub)

    p = sub.add_parser("demo", help="the default job on the built-in data sets")
    p.add_argument("--rows", type=int, default=200_000, help="fashion-clicks rows (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed for data, initialisation and sampling")
    p.add_argument("--nproc", type=int, default=2, help="training processes (default %(default)s)")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs go (default %(default)s)")
    p.set_defaults(func=_cmd_demo)
    _add_sweep_parser(sub)
    _add_run_parser(sub)
    return parser


# -- ranker sweep ----------------------------------------------------------------------------------------------------


def _cmd_sweep(args: argparse.Namespace) -> int:
    from common.config import parse_overrides
    from pipelines.sweep import load_sweep, run_sweep

    cfg = load_sweep(args.sweep, parse_overrides(args.set))
    run_sweep(cfg, args.sweep, max_parallel=args.max_parallel, resume=args.resume, dry_run=args.dry_run)
    if not args.dry_run:
        out = Path(cfg.out_dir)
        print(f"summary: {out / 'summary.md'}\nreport:  {out / 'summary.html'}\nbest:    {out / 'best.yaml'}")
    return 0


def _add_sweep_parser(sub: Any) -> None:
    p = sub.add_parser(
        "sweep",
        help="grid or seeded random search over training config keys, picked on validation (see docs/sweep.md)",
        description="Trains every configuration of SWEEP.yaml with `ranker train`'s launcher, each an MLflow child "
        "run of the sweep's; writes summary.md, summary.html and best.yaml (a train config) into its out_dir.",
    )
    p.add_argument("sweep", type=Path, help="sweep config YAML (see configs/sweep/)")
    p.add_argument("--dry-run", action="store_true", help="check the config and print the runs, train nothing")
    p.add_argument("--max-parallel", type=int, default=1, help="runs trained at once (default %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue interrupted runs from their newest checkpoint")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a sweep config key, e.g. trials=4"
    )
    p.set_defaults(func=_cmd_sweep)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ranker.library_noise import silence_known_library_noise

    silence_known_library_noise()
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, ChildProcessError, TimeoutError) as err:  # ChildProcessError: a failed job
        print(f"ranker: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
