"""Constants shared by the search tests (imported by name: conftest modules are not)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Tiny trials: 64 px, a thin neck, 8 synthetic images, batch 4 without accumulation.
TINY = {"imgsz": 64, "neck_channels": 16, "synthetic_images": 8, "batch": 4, "accumulate": 1,
        "warmup_epochs": 1.0}  # fmt: skip
