"""HOG + Isolation Forest: the replaced platform's anomaly detector, with a map from its cells.

Each HOG block (``cells_per_block`` cells of ``pixels_per_cell`` pixels) is one sample for the
Isolation Forest, with its normalised position appended so a rib-like edge where no rib belongs
stands out. The block's anomaly score (``-score_samples``: higher = more isolated) is spread over
the pixels the block covers (mean over overlapping blocks) to give the map; the image score is the
map's maximum.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
import numpy as np
from skimage.feature import hog
from sklearn.ensemble import IsolationForest


class HogIForest:
    """A fitted (or to-be-fitted) HOG + Isolation Forest anomaly model."""

    def __init__(
        self,
        pixels_per_cell: int = 8,
        cells_per_block: int = 2,
        orientations: int = 9,
        n_estimators: int = 200,
        seed: int = 0,
        forest: IsolationForest | None = None,
    ) -> None:
        self.pixels_per_cell = pixels_per_cell
        self.cells_per_block = cells_per_block
        self.orientations = orientations
        self.n_estimators = n_estimators
        self.seed = seed
        self.forest = forest

    def block_features(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """(blocks, features) HOG block descriptors + (row, col) position in [0, 1], and the grid."""
        blocks = hog(
            np.asarray(image, dtype=np.float64),
            orientations=self.orientations,
            pixels_per_cell=(self.pixels_per_cell, self.pixels_per_cell),
            cells_per_block=(self.cells_per_block, self.cells_per_block),
            block_norm="L2-Hys",
            feature_vector=False,
        )
        rows, cols = blocks.shape[:2]
        flat = blocks.reshape(rows * cols, -1)
        rr, cc = np.mgrid[0:rows, 0:cols]
        position = np.stack([rr.ravel() / max(rows - 1, 1), cc.ravel() / max(cols - 1, 1)], axis=1)
        return np.concatenate([flat, position], axis=1), (rows, cols)

    def fit(self, images: np.ndarray) -> HogIForest:
        """Fit the forest on every block of the NORMAL ``images`` (N, H, W)."""
        features = np.concatenate([self.block_features(img)[0] for img in images])
        self.forest = IsolationForest(
            n_estimators=self.n_estimators, random_state=self.seed, n_jobs=1
        ).fit(features)
        return self

    def score_maps(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.forest is None:
            raise RuntimeError("HogIForest.score_maps before fit()")
        maps = np.stack([self._map(img) for img in images]).astype(np.float32)
        return maps.reshape(len(maps), -1).max(axis=1), maps

    def _map(self, image: np.ndarray) -> np.ndarray:
        assert self.forest is not None
        features, (rows, cols) = self.block_features(image)
        scores = -self.forest.score_samples(features).reshape(rows, cols)
        total = np.zeros(image.shape, np.float64)
        count = np.zeros(image.shape, np.float64)
        side = self.pixels_per_cell * self.cells_per_block
        for r in range(rows):
            for c in range(cols):
                y, x = r * self.pixels_per_cell, c * self.pixels_per_cell
                total[y : y + side, x : x + side] += scores[r, c]
                count[y : y + side, x : x + side] += 1
        # pixels no block covers (right/bottom remainder) take the mean normal level
        return np.where(count > 0, total / np.maximum(count, 1), scores.mean())

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        state: dict[str, Any] = {
            "pixels_per_cell": self.pixels_per_cell,
            "cells_per_block": self.cells_per_block,
            "orientations": self.orientations,
            "n_estimators": self.n_estimators,
            "seed": self.seed,
            "forest": self.forest,
        }
        joblib.dump(state, path, compress=3)

    @classmethod
    def load(cls, path: Path) -> HogIForest:
        """Unpickle a saved model: call only on a file whose SHA-256 matched its card."""
        state = joblib.load(path)
        if not isinstance(state, dict) or not isinstance(state.get("forest"), IsolationForest):
            raise ValueError(f"{path} is not a HOG + Isolation Forest weights file")
        return cls(**state)
