"""hpo's trainer vs a typical hand-written loop, side by side in one process, same models, same device.

Baseline: a torch Dataset yielding PIL images, per-sample torchvision transforms (random horizontal
flip, random rotation up to 10 degrees, ToTensor), a DataLoader, fp32 defaults. hpo: the same models and
augmentations (flip p=0.5, rotation p=1 up to 10 degrees) through ``hpo.train.train``: uint8 data in
memory, batched augmentation, and the execution plan it measures for the machine (hpo.train.plan:
precision, layout, threads), which the table names.

This machine's speed drifts by tens of percent over minutes (a shared VM), so the two loops take turns
of a few seconds, a chunk of batches each, and each one's images/s is all its images over all its time:
both see the same minutes of the machine.

    python benchmarks/trainer_vs_baseline.py [--images 12000] [--threads 2] [--chunk 16] [--rounds 24] [--no-record]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import numpy as np
import torch
from _common import markdown_table, record
from torch import nn


def two_conv() -> nn.Module:
    """PyTorch's classic MNIST example net with batch norm: 3x3 convs of 32 and 64 (no padding), one
    max-pool, dense 9216-128."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 12 * 12, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def four_conv() -> nn.Module:
    """Two conv pairs (32-32, 64-128, 3x3, padded), each followed by a max-pool; dense 512-128."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.Conv2d(64, 128, 3, padding=1),
        nn.BatchNorm2d(128),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(128 * 7 * 7, 512),
        nn.ReLU(),
        nn.Linear(512, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


MODELS = {"2-conv BN CNN (32-64, dense 128)": two_conv, "4-conv BN CNN (32-32-64-128, dense 512-128)": four_conv}


class HandWrittenLoop:
    """The baseline: a torch Dataset of PIL images with per-sample torchvision transforms, a DataLoader,
    fp32 defaults; one model and optimizer that keep training from chunk to chunk."""

    def __init__(self, build, x: np.ndarray, y: np.ndarray, batch: int) -> None:
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
        self.loader = torch.utils.data.DataLoader(
            FashionDataset(x, y, transform), batch_size=batch, shuffle=True, drop_last=True
        )
        self.batches = iter(self.loader)
        torch.manual_seed(0)
        self.model = build()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)
        self.loss_fn = nn.CrossEntropyLoss()

    def run(self, batches: int) -> float:
        """Train on the next ``batches`` batches; the seconds it took."""
        start = time.perf_counter()
        self.model.train()
        for _ in range(batches):
            try:
                images, labels = next(self.batches)
            except StopIteration:
                self.batches = iter(self.loader)
                images, labels = next(self.batches)
            self.optimizer.zero_grad()
            loss = self.loss_fn(self.model(images), labels)
            loss.backward()
            self.optimizer.step()
        return time.perf_counter() - start


class HpoTrainer:
    """hpo's trainer (``hpo.train.train``) on the same module: each chunk is one epoch over the next
    ``batches`` batches of images; the module keeps its weights between chunks."""

    def __init__(
        self,
        build,
        x: np.ndarray,
        y: np.ndarray,
        batch: int,
        threads: int,
        flatten_fix: bool = True,
        compile: bool | str = "auto",
    ) -> None:
        from hpo.config.trial import TrialConfig
        from hpo.models import Classifier

        self.config = TrialConfig.model_validate(
            {
                "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0},
                "schedule": {"name": "constant", "warmup_fraction": 0.0},
                "batch_size": batch,
                "augment": {"hflip": 0.5, "rotate": 1.0, "rotate_degrees": 10.0},
            }
        )
        self.x, self.y, self.threads, self.offset = x, y, threads, 0
        self.flatten_fix, self.compile = flatten_fix, compile
        torch.manual_seed(0)
        self.model = Classifier(build(), (0.0,), (1.0,))
        self.plan = None  # measured on the first turn, then kept

    def run(self, batches: int) -> float:
        from hpo.train import PlanCache, Preferences, TrainData, loop, plan_training, train

        take = (self.offset + np.arange(batches * self.config.batch_size)) % len(self.y)
        self.offset = int(take[-1]) + 1
        data = TrainData.from_arrays(self.x[take], self.y[take], None, None, 10, (0.0,), (1.0,))
        if self.plan is None:
            self.plan = plan_training(
                self.config,
                data,
                threads=self.threads,
                model=self.model,
                prefs=Preferences(compile=self.compile),
                cache=PlanCache(path=None),
                always_measure=True,
            )
        fix = loop.channels_last_gradients
        if not self.flatten_fix:  # ablation: Flatten's gradient goes back NCHW, as in plain PyTorch
            loop.channels_last_gradients = lambda model: contextlib.nullcontext()
        try:
            result = train(self.config, data, epochs=1, seed=self.offset, plan=self.plan, model=self.model)
        finally:
            loop.channels_last_gradients = fix
        return result.history[-1].seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=16, help="batches per turn")
    parser.add_argument("--rounds", type=int, default=24, help="turns of each loop, after a warm-up turn (>= 2)")
    parser.add_argument("--compile", action="store_true", help="also time the trainer with torch.compile")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from hpo.config.study import DatasetConfig
    from hpo.data import load_data
    from hpo.testing import find_fashion_mnist

    data = load_data(
        DatasetConfig(
            name="fashion_mnist",
            data_dir=str(find_fashion_mnist()),
            subset={"train": args.images + 100},
            validation_split=0.01,
        ),
        seed=0,
    )
    x, y = data.x_train[: args.images], data.y_train[: args.images]
    images = args.chunk * args.batch
    rows = []
    for name, build in MODELS.items():
        loops = {
            "hand-written": HandWrittenLoop(build, x, y, args.batch),
            "hpo": HpoTrainer(build, x, y, args.batch, args.threads),
            "hpo, no Flatten fix": HpoTrainer(build, x, y, args.batch, args.threads, flatten_fix=False),
        }
        if args.compile:  # the warm-up turn compiles
            loops["hpo + torch.compile"] = HpoTrainer(build, x, y, args.batch, args.threads, compile=True)
        loops["hpo"].run(1)  # measures its plan before the warm-up round, so no timed turn includes it
        loops["hpo, no Flatten fix"].plan = loops["hpo"].plan  # the same plan, the fix alone differs
        seconds: dict[str, list[float]] = {k: [] for k in loops}
        for round_ in range(args.rounds + 1):
            for key, loop in loops.items():
                took = loop.run(args.chunk)
                torch.set_num_threads(args.threads)
                if round_:  # round 0 warms up
                    seconds[key].append(took)
            if round_ and round_ % 6 == 0:
                print(
                    f"{name}, {round_} rounds: "
                    + ", ".join(f"{k} {images * round_ / sum(seconds[k]):,.0f}" for k in loops)
                    + " img/s",
                    flush=True,
                )
        rate = {k: images * args.rounds / sum(seconds[k]) for k in loops}
        base = rate["hand-written"]
        ratios = sorted(b / f for b, f in zip(seconds["hand-written"], seconds["hpo"], strict=False))
        quartiles = statistics.quantiles(ratios, n=4)
        plan = loops["hpo"].plan
        how = f"{plan.precision}, {plan.layout}, {plan.threads} threads"
        rows.append(
            [
                name,
                how,
                f"{base:,.0f}",
                f"{rate['hpo']:,.0f}",
                f"**{rate['hpo'] / base:.2f}x**",
                f"{quartiles[0]:.2f}-{quartiles[2]:.2f}x",
            ]
            + [f"{rate[k]:,.0f} ({rate[k] / base:.2f}x)" for k in list(loops)[2:]]
        )
    extra = ["hpo without the Flatten fix (img/s)"] + (["hpo + torch.compile (img/s)"] if args.compile else [])
    table = markdown_table(
        [
            "model",
            "hpo's plan (measured)",
            "hand-written loop (img/s)",
            "hpo trainer (img/s)",
            "ratio",
            "ratio per round, middle half",
            *extra,
        ],
        rows,
    )
    notes = (
        f"Real Fashion-MNIST training images ({len(y):,}), batch {args.batch}, {args.threads} threads. The two "
        f"loops take turns, {args.chunk} batches ({images:,} images) each, {args.rounds} turns each after "
        "a warm-up turn, so that both see the same minutes of this VM, whose speed drifts by tens of "
        "percent; images/s is all the images over all the time of each. Both train the same nn.Module "
        "(it keeps its weights between turns) with SGD (momentum 0.9), flip p=0.5 and rotation up to "
        "10 degrees. hpo trains as its execution plan says (hpo/train/plan.py: measured once per model on "
        'this machine before the timed turns). "Without the Flatten fix" turns off `channels_last_gradients` '
        "(hpo/train/loop.py), which sends Flatten's gradient back channels_last: without it the max-pool "
        "before Flatten converts layouts in its backward (the same as hpo where the plan is contiguous)."
    )
    record("Trainer vs hand-written loop (images/s)", table, notes, dry_run=args.no_record)


if __name__ == "__main__":
    main()
