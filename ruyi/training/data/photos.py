"""Real photographs from scikit-image's bundled data, and which of them training may ever see.

The split below was fixed on 2026-12-06, before any model was trained on photographs, and is not
to be moved afterwards: a photo that has been trained on, or that settings were chosen on, can no
longer report how the model does on pictures it never saw.

- ``heldout`` (10): the report set. Scenes and objects a user would try first, plus two
  scientific images. Never trained on, never used to choose a setting.
- ``selection`` (5): for choosing settings (checkpoints, cfg, steps) and recipes. Never trained on.
- ``train`` (4): natural textures and printed text; the only photos a training dataset may crop.

``cat`` is scikit-image's other name for ``chelsea``: it belongs to no set, and the tests compare
pixels as well as names so that such an alias cannot smuggle a held-out photo into training.

Photos are used in one canonical form (:func:`load_photo`): RGB uint8 (greys repeated over the
three channels), box-downscaled so the shorter side is at most ``PHOTO_SIDE``. A machine without
scikit-image (the GPU machine) reads the same arrays from an ``.npz`` written by
:func:`save_photo_cache` (``python -m ruyi.training.data.photos OUT.npz``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ruyi.errors import ConfigError

PHOTO_SETS: dict[str, tuple[str, ...]] = {
    "heldout": ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "clock",
                "hubble_deep_field", "immunohistochemistry"),
    "selection": ("stereo_motorcycle", "retina", "cell", "page", "colorwheel"),
    "train": ("brick", "grass", "gravel", "text"),
}  # fmt: skip
PHOTO_SIDE = 256  # the canonical form's shorter side at most: held-out canvases are 120 px, bank textures ~150
CACHE_ENV = "RUYI_PHOTOS"  # path of an .npz of canonical photos, for machines without scikit-image


def photo_set(name: str) -> tuple[str, ...]:
    if name not in PHOTO_SETS:
        raise ConfigError(f"photo set {name!r} is not one of {', '.join(PHOTO_SETS)}")
    return PHOTO_SETS[name]


def _from_skimage(name: str) -> np.ndarray:
    import skimage.data

    picture = getattr(skimage.data, name)()
    if name == "stereo_motorcycle":
        picture = picture[0]  # (left view, right view, disparity): the left photograph
    picture = np.asarray(picture)
    if picture.ndim == 2:
        picture = np.repeat(picture[..., None], 3, axis=2)
    return np.ascontiguousarray(picture[..., :3]).astype(np.uint8)


def canonical(picture: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3), box-downscaled (never up) so the shorter side is at most ``PHOTO_SIDE``."""
    h, w = picture.shape[:2]
    scale = PHOTO_SIDE / min(h, w)
    if scale >= 1:
        return picture
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(picture).resize(size, Image.Resampling.BOX))


_cache: dict[str, np.ndarray] = {}


def load_photo(name: str) -> np.ndarray:
    """The canonical uint8 (H, W, 3) form of scikit-image's ``name``: from the ``.npz`` named by
    ``$RUYI_PHOTOS`` when set, else from scikit-image (offline; it ships these files)."""
    if name not in _cache:
        cache = os.environ.get(CACHE_ENV)
        if cache:
            with np.load(cache) as stored:
                if name not in stored.files:
                    raise ConfigError(f"photo {name!r} is not in ${CACHE_ENV}={cache} (it holds {', '.join(stored.files)})")
                _cache[name] = stored[name]
        else:
            try:
                _cache[name] = canonical(_from_skimage(name))
            except ImportError as error:
                raise ConfigError(
                    f"photo {name!r} needs scikit-image, or ${CACHE_ENV} pointing at an .npz written by "
                    "`python -m ruyi.training.data.photos OUT.npz` on a machine that has it"
                ) from error
    return _cache[name]


def digest(picture: np.ndarray) -> str:
    """A short hash of a canonical photo's pixels: equal pictures under different names match."""
    return hashlib.sha256(np.ascontiguousarray(picture).tobytes() + str(picture.shape).encode()).hexdigest()[:16]


def check_photo_sets(sets: dict[str, tuple[str, ...]] = PHOTO_SETS) -> dict[str, str]:
    """Fail unless the sets share no photo, by name and by pixels (scikit-image's ``cat`` is
    ``chelsea``) -> {name: digest}."""
    names = [n for group in sets.values() for n in group]
    digests = {n: digest(load_photo(n)) for n in names}
    seen: dict[str, str] = {}
    for group, members in sets.items():
        for name in members:
            other = seen.get(digests[name])
            if other is not None:
                raise ConfigError(f"photo {name!r} of set {group!r} is {other} of another set (same name or pixels)")
        seen.update({digests[n]: f"{n!r} ({group})" for n in members})
    return digests


def save_photo_cache(path: Path) -> dict[str, str]:
    """Write every photo of every set to ``path`` (.npz) in canonical form -> {name: digest}."""
    check_photo_sets()
    names = [n for group in PHOTO_SETS.values() for n in group]
    pictures = {n: load_photo(n) for n in names}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **pictures)
    return {n: digest(p) for n, p in pictures.items()}


if __name__ == "__main__":
    import sys

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "models/photos.npz")
    for photo, sha in save_photo_cache(out).items():
        print(f"{sha}  {photo}")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
