"""Train the demo incidental-PE model on contrast chest CT phantoms; export pinned ONNX.

    .venv/bin/python training/train_incidental_pe.py   # about 25 minutes on one CPU core

Reproducible: fixed seeds, one thread. Writes
``src/aifi/algorithms/incidental_pe/weights/{incidental-pe-demo.onnx,incidental-pe.toml}``.
"""

from __future__ import annotations

import logging
import sys
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aifi.algorithms.incidental_pe.model import CANVAS, CELL, TARGET_MM, canvases_for, model_inputs
from aifi.algorithms.preprocess import to_canvas
from aifi.phantoms.chest_ct import chest_ct_volume
from training.common import (
    TRAIN_SEED_BASE,
    VALIDATION_SEED_BASE,
    WEIGHTS,
    export_onnx,
    seed_everything,
    write_manifest,
)

logger = logging.getLogger("train_incidental_pe")
GRID = CANVAS // CELL
VERSION = "0.2.0-demo"


class EmbolusNet(nn.Module):
    """Five conv blocks, three poolings, a 1x1 head: 16x16 embolus logits per slice.

    Trained on logits (numerically stable loss); :class:`Exported` adds the sigmoid.
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()
            )

        self.body = nn.Sequential(
            block(3, width),
            block(width, width),  # full resolution: a clot is 2-3 pixels across
            nn.MaxPool2d(2),
            block(width, 2 * width),
            nn.MaxPool2d(2),
            block(2 * width, 3 * width),
            nn.MaxPool2d(2),
            block(3 * width, 3 * width),
        )
        self.head = nn.Conv2d(3 * width, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class Exported(nn.Module):
    """The deployed model: probabilities, as ``model.py`` documents."""

    def __init__(self, net: EmbolusNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))


def volume_samples(seed: int, negatives: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and target heatmaps of one phantom: every slice with an embolus, some without."""
    rng = np.random.default_rng(seed)
    volume = chest_ct_volume(rng, embolus=bool(seed % 2))
    spacing = (volume.spacing_mm, volume.spacing_mm)
    canvases, _ = canvases_for(volume.hu, spacing)
    inputs = model_inputs(canvases, volume.slice_positions)
    targets = np.zeros((len(inputs), GRID, GRID), np.float32)
    for i in range(len(inputs)):
        mask = volume.embolus_mask(i)
        if mask.any():
            canvas, _ = to_canvas(mask.astype(np.float32), spacing, TARGET_MM, CANVAS)
            cells = canvas.reshape(GRID, CELL, GRID, CELL).max(axis=(1, 3))
            targets[i] = (cells > 0.2).astype(np.float32)
    positive = np.nonzero(targets.max(axis=(1, 2)) > 0)[0]
    negative = np.nonzero(targets.max(axis=(1, 2)) == 0)[0]
    # hard negatives: slices through the hila, where vessels branch, start and end
    near = np.abs(volume.slice_positions - volume.hilum_z) < 45
    hard = [i for i in negative if near[i]]
    other = [i for i in negative if not near[i]]
    chosen = np.concatenate(
        [
            positive,
            rng.choice(hard, size=min(negatives, len(hard)), replace=False),
            rng.choice(other, size=negatives, replace=False),
        ]
    ).astype(int)
    return inputs[chosen], targets[chosen]


def main(n_volumes: int = 160, epochs: int = 6) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    seed_everything(13)
    start = time.time()
    parts = [volume_samples(TRAIN_SEED_BASE + i) for i in range(n_volumes)]
    x = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    y = torch.from_numpy(np.concatenate([p[1] for p in parts])[:, None])
    n = len(x)
    logger.info(
        "generated %d volumes, %d slices (%d with emboli) in %.0f s",
        n_volumes,
        n,
        int((y.amax(dim=(1, 2, 3)) > 0).sum()),
        time.time() - start,
    )
    model = EmbolusNet()
    batch = 32
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=3e-3, total_steps=epochs * ((n + batch - 1) // batch)
    )
    # emboli cover ~1 cell in 250: weigh positive cells up, and add a slice-level
    # term on the peak logit so that the study score (the peak) is what is learnt
    pos_weight = torch.tensor(20.0)
    loss_of = nn.functional.binary_cross_entropy_with_logits
    generator = torch.Generator().manual_seed(17)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for i in range(0, n, batch):
            idx = order[i : i + batch]
            xb, yb = x[idx].clone(), y[idx].clone()
            flip = torch.rand(len(idx), generator=generator) < 0.5  # left-right mirror
            xb[flip], yb[flip] = xb[flip].flip(-1), yb[flip].flip(-1)
            logits = model(xb)
            loss = loss_of(logits, yb, pos_weight=pos_weight) + loss_of(
                logits.amax(dim=(1, 2, 3)), yb.amax(dim=(1, 2, 3))
            )
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            scheduler.step()
            total += float(loss.detach()) * len(idx)
        logger.info("epoch %d loss %.4f (%.0f s)", epoch + 1, total / n, time.time() - start)
    out = WEIGHTS / "incidental_pe" / "weights"
    export_onnx(
        Exported(model),
        (torch.zeros(1, 3, CANVAS, CANVAS),),
        out / "incidental-pe-demo.onnx",
        ["slices"],
        ["heatmap"],
    )
    write_manifest(
        out, "incidental-pe", VERSION, "incidental-pe-demo.onnx", {"positive_threshold": 0.5}
    )
    logger.info("wrote %s", out)
    calibrate()


def calibrate(n_volumes: int = 24) -> float:
    """Set ``positive_threshold`` to the study-level threshold with the best Youden's J.

    J = sensitivity + specificity - 1 on validation phantoms (seeds from
    ``VALIDATION_SEED_BASE``); the manifest is rewritten with it.
    """
    from aifi.algorithms.incidental_pe import IncidentalPE

    model = IncidentalPE().model
    scores, labels = [], []
    for i in range(n_volumes):
        rng = np.random.default_rng(VALIDATION_SEED_BASE + i)
        volume = chest_ct_volume(rng, embolus=bool(i % 2))
        canvases, _ = canvases_for(volume.hu, (volume.spacing_mm, volume.spacing_mm))
        (heatmaps,) = model.run({"slices": model_inputs(canvases, volume.slice_positions)})
        scores.append(float(heatmaps.max()))
        labels.append(bool(i % 2))
    ordered = sorted(set(scores))
    candidates = [(a + b) / 2 for a, b in pairwise(ordered)] or [0.5]

    def youden(t: float) -> float:
        tp = sum(s >= t and y for s, y in zip(scores, labels, strict=True))
        tn = sum(s < t and not y for s, y in zip(scores, labels, strict=True))
        return tp / sum(labels) + tn / (len(labels) - sum(labels)) - 1

    threshold = round(max(candidates, key=lambda t: (youden(t), t)), 3)
    out = WEIGHTS / "incidental_pe" / "weights"
    write_manifest(
        out,
        "incidental-pe",
        VERSION,
        "incidental-pe-demo.onnx",
        {"positive_threshold": threshold},
    )
    logger.info(
        "positive_threshold %.3f (Youden J %.2f on %d validation volumes)",
        threshold,
        youden(threshold),
        n_volumes,
    )
    return threshold


if __name__ == "__main__":
    main()
