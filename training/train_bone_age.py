"""Train the demo bone-age model on hand phantoms and export it as pinned ONNX.

    .venv/bin/python training/train_bone_age.py   # a few minutes on one CPU core

Reproducible: fixed seeds, one thread. Writes
``src/aifi/algorithms/bone_age/weights/{bone-age-demo.onnx,bone-age.toml}``.
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

from aifi.algorithms.bone_age.model import CANVAS, canvas_for
from aifi.algorithms.preprocess import window
from aifi.phantoms.hand import ADULT_BONE_AGE_MONTHS, hand_radiograph
from training.common import TRAIN_SEED_BASE, WEIGHTS, export_onnx, seed_everything, write_manifest

logger = logging.getLogger("train_bone_age")
SCALE = 228.0


class BoneAgeNet(nn.Module):
    """Four conv blocks down to 8x8, then a small regressor that also sees the sex."""

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)
            )

        self.body = nn.Sequential(
            block(1, 16),
            block(16, 32),
            block(32, 48),
            block(48, 48),
            nn.Conv2d(48, 16, 1),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Linear(16 * 8 * 8 + 1, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, image: torch.Tensor, sex: torch.Tensor) -> torch.Tensor:
        features = self.body(image).flatten(1)
        return self.head(torch.cat([features, sex], dim=1)) * SCALE


def sample(seed: int) -> tuple[np.ndarray, float, float]:
    """One training triple: canvas, sex (1 male) and bone age in months."""
    rng = np.random.default_rng(seed)
    sex = "M" if seed % 2 else "F"
    bone_age = float(rng.uniform(0, ADULT_BONE_AGE_MONTHS[sex]))
    image = hand_radiograph(rng, bone_age_months=bone_age, sex=sex)
    unit = window(image.pixels.astype(np.float64), image.window_center, image.window_width)
    canvas, _ = canvas_for(unit, (image.spacing_mm, image.spacing_mm))
    return canvas, 1.0 if sex == "M" else 0.0, bone_age


def main(n_train: int = 2400, epochs: int = 14) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    seed_everything(5)
    start = time.time()
    triples = [sample(TRAIN_SEED_BASE + i) for i in range(n_train)]
    x = torch.from_numpy(np.stack([t[0] for t in triples])[:, None])
    s = torch.tensor([[t[1]] for t in triples], dtype=torch.float32)
    y = torch.tensor([[t[2]] for t in triples], dtype=torch.float32)
    logger.info("generated %d phantoms in %.0f s", n_train, time.time() - start)
    model = BoneAgeNet()
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, epochs)
    generator = torch.Generator().manual_seed(3)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n_train, generator=generator)
        total = 0.0
        for i in range(0, n_train, 32):
            idx = order[i : i + 32]
            pred = model(x[idx], s[idx])
            loss = nn.functional.smooth_l1_loss(pred / SCALE, y[idx] / SCALE, beta=0.02)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float((pred.detach() - y[idx]).abs().sum())
        scheduler.step()
        logger.info(
            "epoch %d train MAE %.1f months (%.0f s)",
            epoch + 1,
            total / n_train,
            time.time() - start,
        )
    out = WEIGHTS / "bone_age" / "weights"
    export_onnx(
        model,
        (torch.zeros(1, 1, CANVAS, CANVAS), torch.zeros(1, 1)),
        out / "bone-age-demo.onnx",
        ["image", "sex"],
        ["bone_age_months"],
    )
    write_manifest(out, "bone-age", "0.1.0-demo", "bone-age-demo.onnx", {})
    logger.info("wrote %s", out)


if __name__ == "__main__":
    main()
