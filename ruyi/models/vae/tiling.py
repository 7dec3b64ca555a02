"""Spatial tiling of the MagViT VAE: where the tiles go and how their overlaps are blended.

Tiles are laid out in latent units (one latent pixel = ``spatial_compression`` video pixels), so
the same grid serves decoding (latent tile -> pixel tile) and encoding (pixel tile -> latent
tile). Overlaps are cross-faded linearly; each axis's weights sum to one at every position, so
the 2-D products of the row and column weights do too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class VAETiling:
    """Options of ``MagvitVAE3D.enable_tiling``, in video pixels.

    A tile holds at most ``tile_sample_size ** 2`` pixels (memory follows tile area); neighbours
    overlap by at least ``tile_overlap``. Among the row x column grids that fit, the one with the
    fewest pixels in all, then the fewest tiles, is used, tiles as equal as possible: 768 x 768
    with 512/96 -> 2 x 2 tiles of 432 x 432; with 640/96 -> 2 x 1 tiles of 432 x 768. A frame of
    at most ``tile_sample_size ** 2`` pixels is not split.
    """

    tile_sample_size: int = 512
    tile_overlap: int = 96

    def __post_init__(self) -> None:
        for name in ("tile_sample_size", "tile_overlap"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"VAETiling.{name} must be an int (pixels), got {value!r}")
        if self.tile_sample_size <= 0:
            raise ValueError(f"VAETiling.tile_sample_size must be positive, got {self.tile_sample_size}")
        if not 0 <= self.tile_overlap < self.tile_sample_size:
            raise ValueError(
                f"VAETiling.tile_overlap={self.tile_overlap} must be >= 0 and smaller than "
                f"tile_sample_size={self.tile_sample_size}"
            )

    def check_divisible(self, factor: int) -> None:
        """Raise unless both sizes are whole latent pixels (multiples of ``factor``)."""
        for name in ("tile_sample_size", "tile_overlap"):
            value = getattr(self, name)
            if value % factor:
                raise ValueError(
                    f"VAETiling.{name}={value} must be a multiple of the VAE's spatial compression {factor}; "
                    f"try {max(factor, value // factor * factor)}"
                )


@dataclass(frozen=True)
class SpatialTile:
    """One tile of the latent plane: ``rows`` and ``cols`` are latent slices."""

    rows: slice
    cols: slice

    def scaled(self, factor: int) -> tuple[slice, slice]:
        """The same region ``factor`` times finer (e.g. in video pixels)."""
        return (
            slice(self.rows.start * factor, self.rows.stop * factor),
            slice(self.cols.start * factor, self.cols.stop * factor),
        )


def axis_spans(length: int, count: int, overlap: int) -> list[tuple[int, int]] | None:
    """``count`` equal ``[start, stop)`` spans covering ``range(length)``, neighbours overlapping by
    at least ``overlap``, evenly spread; None when they would not advance."""
    if count == 1:
        return [(0, length)]
    size = math.ceil((length + (count - 1) * overlap) / count)
    if size - overlap < 1 or size >= length:
        return None
    # consecutive starts differ by at most size - overlap, so no overlap is narrower than asked
    starts = [(i * (length - size) + (count - 1) // 2) // (count - 1) for i in range(count)]
    return [(s, s + size) for s in starts]


def tile_grid(height: int, width: int, tiling: VAETiling, factor: int) -> list[SpatialTile]:
    """Tiles (row-major) of a ``height`` x ``width`` latent plane; sizes in ``tiling`` are / ``factor``."""
    budget, overlap = (tiling.tile_sample_size // factor) ** 2, tiling.tile_overlap // factor
    rows = [s for n in range(1, height + 1) if (s := axis_spans(height, n, overlap))]
    cols = [s for n in range(1, width + 1) if (s := axis_spans(width, n, overlap))]
    fits = [
        (len(r) * len(c) * _span(r) * _span(c), len(r) * len(c), r, c)
        for r in rows
        for c in cols
        if _span(r) * _span(c) <= budget
    ]
    if not fits:  # a plane too narrow for the overlap along both axes: the smallest tiles there are
        fits = [(0, 0, rows[-1], cols[-1])]
    *_, best_rows, best_cols = min(fits, key=lambda f: f[:2])
    return [SpatialTile(slice(*r), slice(*c)) for r in best_rows for c in best_cols]


def _span(spans: list[tuple[int, int]]) -> int:
    return spans[0][1] - spans[0][0]


def _axis_weights(
    spans: list[tuple[int, int]], scale: int, device: torch.device
) -> dict[tuple[int, int], torch.Tensor]:
    """Per span, float32 weights at ``scale`` x resolution that sum to one across spans everywhere."""
    raw = {}
    for i, (start, stop) in enumerate(spans):
        w = torch.ones((stop - start) * scale, device=device)
        if i > 0:
            n = (spans[i - 1][1] - start) * scale
            if n > 0:
                w[:n] = torch.minimum(w[:n], _ramp(n, device))
        if i + 1 < len(spans):
            n = (stop - spans[i + 1][0]) * scale
            if n > 0:
                w[-n:] = torch.minimum(w[-n:], _ramp(n, device).flip(0))
        raw[(start, stop)] = w
    total = torch.zeros(spans[-1][1] * scale, device=device)
    for (start, _), w in raw.items():
        total[start * scale : start * scale + w.numel()] += w
    # normalising keeps weights exact ones where a single tile covers (bit-exact single-tile path)
    return {(a, b): w / total[a * scale : b * scale] for (a, b), w in raw.items()}


def _ramp(n: int, device: torch.device) -> torch.Tensor:
    """``n`` weights rising from near 0 to near 1, symmetric: ramp + ramp.flip(0) == 1."""
    return (torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n


def blend_weights(tiles: list[SpatialTile], scale: int, device: torch.device) -> list[torch.Tensor]:
    """Per tile, float32 weights ``(rows * scale, cols * scale)``; over all tiles they sum to one."""
    row_w = _axis_weights(sorted({(t.rows.start, t.rows.stop) for t in tiles}), scale, device)
    col_w = _axis_weights(sorted({(t.cols.start, t.cols.stop) for t in tiles}), scale, device)
    return [row_w[(t.rows.start, t.rows.stop)][:, None] * col_w[(t.cols.start, t.cols.stop)] for t in tiles]
