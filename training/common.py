"""Shared helpers of the demo-model training scripts (needs the ``train`` extra: torch, onnx).

Seeds: training phantoms use seeds from ``TRAIN_SEED_BASE``, thresholds are
calibrated on ``VALIDATION_SEED_BASE`` and the held-out phantoms of
``training/evaluate.py`` use ``HELD_OUT_SEED_BASE``, so the three never overlap.
"""

from __future__ import annotations

import hashlib
import logging
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "HELD_OUT_SEED_BASE",
    "TRAIN_SEED_BASE",
    "VALIDATION_SEED_BASE",
    "WEIGHTS",
    "export_onnx",
    "seed_everything",
    "write_manifest",
]

TRAIN_SEED_BASE = 1_000_000
VALIDATION_SEED_BASE = 5_000_000
HELD_OUT_SEED_BASE = 9_000_000
WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "aifi" / "algorithms"

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Fix every random source, and use one thread (the machine is shared)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def export_onnx(
    model: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
) -> None:
    """Export with a dynamic batch axis (opset 17, TorchScript exporter: no extra packages)."""
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {name: {0: "batch"} for name in input_names + output_names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            example,
            str(path),
            dynamo=False,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=axes,
            opset_version=17,
        )


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_manifest(
    directory: Path, algorithm: str, version: str, onnx_name: str, parameters: dict[str, Any]
) -> Path:
    """Write ``<algorithm>.toml`` pinning ``onnx_name`` by SHA-256 (see docs/models.md)."""
    digest = hashlib.sha256((directory / onnx_name).read_bytes()).hexdigest()
    lines = [
        f"# Demo model for {algorithm}: trained by training/train_{algorithm.replace('-', '_')}.py",
        "# on procedurally generated phantoms. Not for clinical use.",
        f'algorithm = "{algorithm}"',
        f'version = "{version}"',
        'vendor = "aifi project (demo weights)"',
        f'file = "{onnx_name}"',
        f'sha256 = "{digest}"',
        "demo = true",
        'regulatory_status = "demo model — not for clinical use; not a medical device"',
        "",
        "[parameters]",
        *(f"{k} = {_toml_value(v)}" for k, v in parameters.items()),
        "",
    ]
    path = directory / f"{algorithm}.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
