"""hpo's trainer vs a typical hand-written loop, side by side in one process, same models, same device.

Baseline: a torch Dataset yielding PIL images, per-sample torchvision transforms (random horizontal
flip, random rotation up to 10 degrees, ToTensor), a DataLoader, fp32 defaults. hpo: the same models and
augmentations (flip p=0.5, rotation p=1 up to 10 degrees) through ``hpo.train.train``: uint8 data in
memory, batched augmentation, channels_last, bf16 autocast. Images/s over one epoch after a warm-up epoch.

This machine's speed drifts by tens of percent over minutes (a shared VM), so the two loops alternate,
round after round, and the ratio reported is the median of the rounds' ratios (each round's pair runs
back to back), with the range.

    python benchmarks/trainer_vs_baseline.py [--images 12000] [--threads 2] [--rounds 5] [--no-record]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch import nn

from _common import markdown_table, record


def two_conv() -> nn.Module:
    """PyTorch's classic MNIST example net with batch norm: 3x3 convs of 32 and 64 (no padding), one
    max-pool, dense 9216-128."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 12 * 12, 128), nn.ReLU(), nn.Linear(128, 10))


def four_conv() -> nn.Module:
    """Two conv pairs (32-32, 64-128, 3x3, padded), each followed by a max-pool; dense 512-128."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(128 * 7 * 7, 512), nn.ReLU(), nn.Linear(512, 128), nn.ReLU(), nn.Linear(128, 10))


MODELS = {"2-conv BN CNN (32-64, dense 128)": two_conv,
          "4-conv BN CNN (32-32-64-128, dense 512-128)": four_conv}


def baseline_images_per_second(build, x: np.ndarray, y: np.ndarray, batch: int) -> float:
    from PIL import Image

    from hpo._torchvision import import_torchvision

    T = import_torchvision().transforms

    class FashionDataset(torch.utils.data.Dataset):
        def __init__(self, images, labels, transform):
            self.images, self.labels, self.transform = images, labels, transform

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            return self.transform(Image.fromarray(self.images[i, 0], mode="L")), int(self.labels[i])

    transform = T.Compose([T.RandomHorizontalFlip(), T.RandomRotation(10), T.ToTensor()])
    loader = torch.utils.data.DataLoader(FashionDataset(x, y, transform), batch_size=batch, shuffle=True)
    torch.manual_seed(0)
    model = build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    rates = []
    for _epoch in range(2):  # the first epoch is warm-up
        start = time.perf_counter()
        model.train()
        for images, labels in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(images), labels)
            loss.backward()
            optimizer.step()
        rates.append(len(y) / (time.perf_counter() - start))
    return rates[-1]


def hpo_images_per_second(build, x: np.ndarray, y: np.ndarray, batch: int, threads: int) -> float:
    from hpo.config.trial import TrialConfig
    from hpo.models import Classifier
    from hpo.train import TrainData, train

    config = TrialConfig.model_validate({
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0},
        "schedule": {"name": "constant", "warmup_fraction": 0.0}, "batch_size": batch,
        "augment": {"hflip": 0.5, "rotate": 1.0, "rotate_degrees": 10.0}})
    data = TrainData.from_arrays(x, y, None, None, 10, (0.0,), (1.0,))
    torch.manual_seed(0)
    result = train(config, data, epochs=2, seed=0, threads=threads, model=Classifier(build(), (0.0,), (1.0,)))
    return result.history[-1].images_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from hpo.config.study import DatasetConfig
    from hpo.data import load_data
    from hpo.testing import find_fashion_mnist

    data = load_data(DatasetConfig(name="fashion_mnist", data_dir=str(find_fashion_mnist()),
                                   subset={"train": args.images + 100}, validation_split=0.01), seed=0)
    x, y = data.x_train[: args.images], data.y_train[: args.images]
    rows = []
    for name, build in MODELS.items():
        bases, fasts = [], []
        for round_ in range(args.rounds):
            bases.append(baseline_images_per_second(build, x, y, args.batch))
            torch.set_num_threads(args.threads)
            fasts.append(hpo_images_per_second(build, x, y, args.batch, args.threads))
            print(f"{name} round {round_ + 1}: {bases[-1]:,.0f} vs {fasts[-1]:,.0f} img/s "
                  f"({fasts[-1] / bases[-1]:.2f}x)", flush=True)
        ratios = sorted(f / b for f, b in zip(fasts, bases))
        rows.append([name, f"{statistics.median(bases):,.0f}", f"{statistics.median(fasts):,.0f}",
                     f"**{statistics.median(ratios):.2f}x**", f"{ratios[0]:.2f}-{ratios[-1]:.2f}x"])
        print(rows[-1], flush=True)
    table = markdown_table(["model", "hand-written loop (img/s, median)", "hpo trainer (img/s, median)",
                            "ratio (median of rounds)", "range"], rows)
    notes = (f"{len(y):,} real Fashion-MNIST training images, batch {args.batch}, {args.threads} threads, "
             f"{args.rounds} alternating rounds; images/s of the second epoch of each (the first is warm-up); "
             "both loops train the same nn.Module with SGD (momentum 0.9), flip p=0.5 and rotation up to 10 "
             "degrees.")
    record("Trainer vs hand-written loop (images/s)", table, notes, dry_run=args.no_record)


if __name__ == "__main__":
    main()
