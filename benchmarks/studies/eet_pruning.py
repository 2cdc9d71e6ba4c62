"""EET token pruning: MACs and CPU latency with and without pruning, and the accuracy cost on Fashion-MNIST.

Run (from the repo root):

    .venv/bin/python -m benchmarks.studies.eet_pruning --n-train 3000 --epochs 6 --batch-size 32 --lr 1e-3 --threads 1

Part 1 (cost): ViT-S/16 at 3 x 224 x 224 (``vit_s16`` vs ``eet_vit_s16``: pruned after blocks 4, 8, 10 to 98, 49,
12 patches) and the Fashion-MNIST pair (``vit_fm`` vs ``eet_vit_fm``: after blocks 2, 4, 5 to 24, 12, 6 of 49).
Part 2 (accuracy, same budget for every run, all 10,000 test photos):
  a. ``vit_fm`` trained with cross-entropy (no pruning);
  b. the same weights evaluated with pruning switched on (no retraining);
  c. ``eet_vit_fm`` trained with cross-entropy, pruning during training;
  d. ``eet_vit_fm`` trained with EET's discriminative transfer from an unpruned teacher: by default run (a)'s model
     (same size, as in EET's released code, and free here); ``--teacher vit_fm_teacher`` trains the wider one first.
ViT-style towers start slowly from scratch (see towers_fmnist), hence more steps than towers_fmnist uses.
Writes ``benchmarks/results/studies/eet_pruning.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import torch

from benchmarks.towers_common import (
    STUDIES,
    count_macs,
    machine_info,
    machine_markdown,
    paired_latency_ms,
    write_results,
)
from features.datasets.fashion_mnist import load_split
from vision_towers import create_tower
from vision_towers.eet import EETLoss
from vision_towers.pretrain import evaluate, fmnist_subset, train_classifier


def cost_rows(pairs: list[tuple[str, str, int, int]]) -> list[dict[str, Any]]:
    """(unpruned, pruned, num_classes, batch) -> MACs, batch-1 and batch latency of each tower, timed interleaved."""
    rows = []
    for base, pruned, num_classes, batch in pairs:
        towers = {name: create_tower(name, num_classes=num_classes) for name in (base, pruned)}
        single = paired_latency_ms(towers, 1)
        batched = paired_latency_ms(towers, batch, repeats=10)
        for name, tower in towers.items():
            row = {
                "tower": name,
                "input": f"{tower.in_chans}x{tower.img_size}x{tower.img_size}",
                "gmacs": count_macs(tower) / 1e9,
                "latency_b1": single[name],
                "batch": batch,
                "latency_batch": batched[name],
            }
            rows.append(row)
            print(row, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--teacher", choices=("vit_fm", "vit_fm_teacher"), default="vit_fm")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    info = machine_info()

    # Smaller throughput batches at 224 px keep the benchmark within minutes on a loaded 1-thread CPU.
    costs = cost_rows([("vit_s16", "eet_vit_s16", 1000, 8), ("vit_fm", "eet_vit_fm", 10, 64)])

    train_x, train_y = fmnist_subset("train", args.n_train, args.seed)
    test_x, test_y = load_split("test")
    budget = (args.epochs, args.batch_size, args.lr, args.seed)
    acc: dict[str, float] = {}
    train_s: dict[str, float] = {}

    def fit(name: str, **kwargs: Any) -> torch.nn.Module:
        torch.manual_seed(args.seed)
        tower = create_tower(name, num_classes=10)
        start = time.perf_counter()
        train_classifier(tower, train_x, train_y, *budget, **kwargs)
        train_s[name if not kwargs else f"{name}+eet"] = time.perf_counter() - start
        return tower

    base = fit("vit_fm")
    acc["a_vit_fm_unpruned"] = evaluate(base, test_x, test_y)
    pruned_view = create_tower("eet_vit_fm", num_classes=10)
    pruned_view.load_state_dict(base.state_dict())  # same architecture and keys; only the pruning schedule differs
    acc["b_vit_fm_pruned_at_inference"] = evaluate(pruned_view, test_x, test_y)
    acc["c_eet_vit_fm_ce"] = evaluate(fit("eet_vit_fm"), test_x, test_y)
    teacher = (base if args.teacher == "vit_fm" else fit(args.teacher)).requires_grad_(False)
    acc[f"teacher_{args.teacher}"] = evaluate(teacher, test_x, test_y)
    loss_cfg = dict(ce_weight=1.0, mask_weight=0.5, cos_weight=1.0, kl_weight=1.0, temperature=2.0, mask_top=4)
    eet_loss = EETLoss(**loss_cfg)
    student = fit("eet_vit_fm", loss_fn=lambda tower, x, y: eet_loss(tower, teacher, x, y)[0])
    acc["d_eet_vit_fm_discriminative_transfer"] = evaluate(student, test_x, test_y)
    print(acc, flush=True)

    payload = {
        "args": vars(args),
        "machine": info,
        "loadavg_end": list(os.getloadavg()),
        "cost": costs,
        "accuracy": acc,
        "eet_loss": loss_cfg,
        "train_s": train_s,
    }
    cost_table = "".join(
        f"| {r['tower']} | {r['input']} | {r['gmacs']:.4f} | {r['latency_b1']['median_ms']:.1f} "
        f"({r['latency_b1']['min_ms']:.1f}) | {r['latency_b1']['ratio_to_first']:.2f} | {r['batch']} | "
        f"{r['latency_batch']['median_ms']:.0f} ({r['latency_batch']['min_ms']:.0f}) | "
        f"{r['latency_batch']['ratio_to_first']:.2f} |\n"
        for r in costs
    )
    acc_table = "".join(f"| {k} | {v:.4f} |\n" for k, v in acc.items())
    md = (
        "# EET token pruning: cost and accuracy\n\n"
        f"Command: `.venv/bin/python -m benchmarks.studies.eet_pruning --n-train {args.n_train} --epochs {args.epochs} "
        f"--batch-size {args.batch_size} --lr {args.lr} --teacher {args.teacher} --threads {args.threads}`\n\n"
        "## Cost\n\nGMACs = FlopCounterMode FLOPs / 2 per image incl. head. Latency in ms, median (min); the unpruned "
        "and pruned towers are timed interleaved (20 rounds at batch 1, 10 at the larger batch) and 'speed-up' is the "
        "median of the per-round time ratios unpruned / pruned, which is the most load-robust number here.\n\n"
        "| tower | input | GMACs | latency b=1 | speed-up b=1 | batch | latency batch | speed-up batch |\n"
        "|---|---|---|---|---|---|---|---|\n"
        + cost_table
        + f"\n## Accuracy on the 10,000 test photos ({args.n_train} train photos, {args.epochs} epochs, "
        f"batch {args.batch_size}, AdamW lr {args.lr} cosine, seed {args.seed})\n\n"
        f"EET loss for (d): {loss_cfg}; teacher = `{args.teacher}` trained with cross-entropy on the same budget"
        f"{' (the model of run a)' if args.teacher == 'vit_fm' else ''}.\n\n"
        "| run | test acc |\n|---|---|\n" + acc_table + "\n" + machine_markdown(info)
    )
    write_results("eet_pruning", payload, md, STUDIES)


if __name__ == "__main__":
    main()
