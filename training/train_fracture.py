"""Train the demo fracture model on long-bone phantoms and export it as pinned ONNX.

    .venv/bin/python training/train_fracture.py   # a few minutes on one CPU core

Reproducible: fixed seeds, one thread. Writes
``src/aifi/algorithms/fracture/weights/{fracture-demo.onnx,fracture.toml}``.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aifi.algorithms.fracture.model import CANVAS, CELL, canvas_for
from aifi.algorithms.preprocess import window
from aifi.phantoms.long_bone import BODY_PARTS, long_bone_radiograph
from training.common import TRAIN_SEED_BASE, WEIGHTS, export_onnx, seed_everything, write_manifest

logger = logging.getLogger("train_fracture")
GRID = CANVAS // CELL


class FractureNet(nn.Module):
    """Four conv blocks, three poolings, a 1x1 head: a 20x20 fracture heatmap."""

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()
            )

        self.body = nn.Sequential(
            block(1, 12),
            nn.MaxPool2d(2),
            block(12, 24),
            nn.MaxPool2d(2),
            block(24, 32),
            nn.MaxPool2d(2),
            block(32, 48),
            block(48, 48),
        )
        self.head = nn.Conv2d(48, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(self.body(x)))


def sample(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One training pair: canvas and target heatmap (cells under the fracture box)."""
    rng = np.random.default_rng(seed)
    fracture = bool(seed % 2)
    part = sorted(BODY_PARTS)[int(rng.integers(len(BODY_PARTS)))]
    image = long_bone_radiograph(rng, fracture=fracture, body_part=part)
    unit = window(image.pixels.astype(np.float64), image.window_center, image.window_width)
    canvas, geometry = canvas_for(unit, (image.spacing_mm, image.spacing_mm))
    target = np.zeros((GRID, GRID), np.float32)
    for x0, y0, x1, y1 in image.boxes:
        # source pixels → canvas pixels → cells
        cx0 = x0 / geometry.scale_x + geometry.offset_x
        cx1 = x1 / geometry.scale_x + geometry.offset_x
        cy0 = y0 / geometry.scale_y + geometry.offset_y
        cy1 = y1 / geometry.scale_y + geometry.offset_y
        c0, c1 = int(np.clip(cx0 // CELL, 0, GRID - 1)), int(np.clip(cx1 // CELL, 0, GRID - 1))
        r0, r1 = int(np.clip(cy0 // CELL, 0, GRID - 1)), int(np.clip(cy1 // CELL, 0, GRID - 1))
        target[r0 : r1 + 1, c0 : c1 + 1] = 1.0
    return canvas, target


def main(n_train: int = 1600, epochs: int = 10) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    seed_everything(7)
    start = time.time()
    pairs = [sample(TRAIN_SEED_BASE + i) for i in range(n_train)]
    x = torch.from_numpy(np.stack([p[0] for p in pairs])[:, None])
    y = torch.from_numpy(np.stack([p[1] for p in pairs])[:, None])
    logger.info("generated %d phantoms in %.0f s", n_train, time.time() - start)
    model = FractureNet()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, epochs)
    generator = torch.Generator().manual_seed(11)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n_train, generator=generator)
        total = 0.0
        for i in range(0, n_train, 32):
            idx = order[i : i + 32]
            xb, yb = x[idx], y[idx]
            if epoch % 2:
                xb, yb = xb.flip(-1), yb.flip(-1)
            pred = model(xb).clamp(1e-6, 1 - 1e-6)
            weight = 1.0 + 8.0 * yb
            loss = (nn.functional.binary_cross_entropy(pred, yb, reduction="none") * weight).mean()
            # image level: the peak must say whether the image holds a fracture
            peak = pred.amax(dim=(1, 2, 3))
            loss = loss + nn.functional.binary_cross_entropy(peak, yb.amax(dim=(1, 2, 3)))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(idx)
        scheduler.step()
        logger.info("epoch %d loss %.4f (%.0f s)", epoch + 1, total / n_train, time.time() - start)
    out = WEIGHTS / "fracture" / "weights"
    export_onnx(
        model,
        (torch.zeros(1, 1, CANVAS, CANVAS),),
        out / "fracture-demo.onnx",
        ["image"],
        ["heatmap"],
    )
    write_manifest(
        out,
        "fracture",
        "0.1.0-demo",
        "fracture-demo.onnx",
        {"positive_threshold": 0.6, "doubtful_threshold": 0.3},
    )
    logger.info("wrote %s", out)


if __name__ == "__main__":
    main()
