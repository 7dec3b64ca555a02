"""Aspect-ratio buckets: which (height, width) a start image is generated at.

The original trains and samples on a table of 40 buckets defined at 512 (h x w pixels, h/w from
1:4 to 4:1). For another ``base_resolution`` the table is scaled by ``base_resolution / 512``;
the bucket whose (rounded) h/w is closest to the image's wins, and each side is floored to a
multiple of 16.
"""

from __future__ import annotations

from collections.abc import Sequence

from ruyi.errors import ConfigError

# (height, width) at base resolution 512, in increasing h/w.
BUCKETS_512: tuple[tuple[int, int], ...] = (
    (256, 1024), (256, 992), (256, 960), (256, 928), (288, 896), (288, 864), (288, 832),
    (320, 800), (320, 768), (352, 736), (352, 704), (352, 672), (384, 672), (384, 640),
    (416, 608), (416, 576), (448, 576), (448, 544), (480, 544), (480, 512), (512, 512),
    (512, 480), (544, 480), (544, 448), (576, 448), (576, 416), (608, 416), (640, 384),
    (672, 384), (704, 352), (736, 352), (768, 320), (800, 320), (832, 288), (864, 288),
    (896, 288), (928, 256), (960, 256), (992, 256), (1024, 256),
)  # fmt: skip

MIN_RESOLUTION, MAX_RESOLUTION = 384, 896
SIDE_MULTIPLE = 16


def check_base_resolution(base_resolution: int) -> None:
    if not isinstance(base_resolution, int) or not MIN_RESOLUTION <= base_resolution <= MAX_RESOLUTION:
        raise ConfigError(
            f"base_resolution={base_resolution} is out of range; use {MIN_RESOLUTION}..{MAX_RESOLUTION} "
            "(512 or 768 are the trained ones)"
        )


def bucket_size(image_wh: Sequence[int], base_resolution: int) -> tuple[int, int]:
    """``(height, width)`` for an image of size ``(width, height)`` at ``base_resolution``."""
    check_base_resolution(base_resolution)
    width, height = image_wh
    aspect = height / width
    # Buckets are compared by their h/w rounded to 2 decimals, as the original keys them.
    h, w = min(BUCKETS_512, key=lambda hw: abs(round(hw[0] / hw[1], 2) - aspect))
    scale = base_resolution / 512
    return tuple(int(side * scale / SIDE_MULTIPLE) * SIDE_MULTIPLE for side in (h, w))  # type: ignore[return-value]


def resolve_size(
    image_wh: Sequence[int], base_resolution: int = 512, video_size: Sequence[int] | None = None
) -> tuple[int, int]:
    """The generation size: ``video_size=[h, w]`` if given (multiples of 16), else the bucket."""
    check_base_resolution(base_resolution)
    if video_size is None:
        return bucket_size(image_wh, base_resolution)
    if len(video_size) != 2 or any(int(s) != s or s <= 0 or s % SIDE_MULTIPLE for s in video_size):
        raise ConfigError(
            f"video_size={list(video_size)} is invalid; give [height, width] as positive multiples of "
            f"{SIDE_MULTIPLE}, e.g. [384, 672]"
        )
    return int(video_size[0]), int(video_size[1])
