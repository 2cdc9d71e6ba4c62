"""Every tower family on Fashion-MNIST classification under one small training budget.

Run (from the repo root):

    .venv/bin/python -m benchmarks.towers_fmnist --n-train 3000 --epochs 2 --threads 1

Trains each small tower from scratch (seeded AdamW, cosine schedule, no augmentation) on a random subset of the
train split, then reports test accuracy on all 10,000 test photos, parameters, MACs per image, CPU inference
throughput and training time. Writes ``benchmarks/results/towers_fmnist.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from benchmarks.towers_common import (
    RESULTS,
    count_macs,
    images_per_second,
    machine_info,
    machine_markdown,
    write_results,
)
from features.datasets.fashion_mnist import load_split
from vision_towers import create_tower
from vision_towers.pretrain import evaluate, fmnist_subset, train_classifier

TOWERS = ("efficientmod_fm", "convformer_fm", "caformer_fm", "convit_fm", "vit_fm", "eet_vit_fm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--towers", nargs="*", default=list(TOWERS))
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for towers_fmnist.{json,md}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    info = machine_info()

    train_x, train_y = fmnist_subset("train", args.n_train, args.seed)
    test_x, test_y = load_split("test")
    rows = []
    for name in args.towers:
        torch.manual_seed(args.seed)
        tower = create_tower(name, num_classes=10)
        start = time.perf_counter()
        losses = train_classifier(tower, train_x, train_y, args.epochs, args.batch_size, args.lr, args.seed)
        train_s = time.perf_counter() - start
        row = {
            "tower": name,
            "input": f"{tower.in_chans}x{tower.img_size}x{tower.img_size}",
            "embed_dim": tower.embed_dim,
            "params_m": sum(p.numel() for p in tower.parameters()) / 1e6,
            "mmacs_per_image": count_macs(tower) / 1e6,
            "test_acc": evaluate(tower, test_x, test_y),
            "final_train_loss": sum(losses[-10:]) / len(losses[-10:]),
            "train_s": train_s,
            "infer_img_per_s_b256": images_per_second(tower, 256),
        }
        rows.append(row)
        print(row, flush=True)

    payload = {
        "command": shlex.join(["python", "-m", "benchmarks.towers_fmnist", *sys.argv[1:]]),
        "args": {**vars(args), "out": str(args.out)},
        "machine": info,
        "loadavg_end": list(os.getloadavg()),
        "rows": rows,
    }
    header = (
        "| tower | input | D | params (M) | MMACs/img | test acc | train s | CPU img/s (b=256) |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    table = "".join(
        f"| {r['tower']} | {r['input']} | {r['embed_dim']} | {r['params_m']:.2f} | {r['mmacs_per_image']:.1f} | "
        f"{r['test_acc']:.4f} | {r['train_s']:.0f} | {r['infer_img_per_s_b256']:.0f} |\n"
        for r in rows
    )
    md = (
        "# Vision towers on Fashion-MNIST (small fixed budget)\n\n"
        f"Command: `.venv/bin/python -m benchmarks.towers_fmnist --n-train {args.n_train} --epochs {args.epochs} "
        f"--threads {args.threads}`\n\n"
        f"Budget: {args.n_train} random train photos (seed {args.seed}), {args.epochs} epochs, batch "
        f"{args.batch_size}, AdamW lr {args.lr} cosine, no augmentation, from scratch; accuracy on all 10,000 test "
        "photos. Params include the 10-class head; MACs = FlopCounterMode FLOPs / 2 (convs + matmuls, not "
        "softmax/element-wise) per image at the tower's input size. Throughput is the best of 5 batches.\n\n"
        + header
        + table
        + "\n"
        + machine_markdown(info)
    )
    write_results("towers_fmnist", payload, md, args.out)


if __name__ == "__main__":
    main()
