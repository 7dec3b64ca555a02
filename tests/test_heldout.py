"""ruyi.eval.heldout and the photo split: what the held-out and selection sets hold, that training
never sees their photographs (by name and by pixels), and that the measure reads true pans of a
photograph right while a pure gradient panned along itself is no test at all."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from ruyi.errors import ConfigError
from ruyi.eval import heldout
from ruyi.eval.motion import CONTENT, content_motion, follows
from ruyi.training.data import ProceduralPans
from ruyi.training.data import photos as photo_data
from ruyi.training.data.pictures import KINDS, PHOTO_KINDS, TEXTURE_KINDS

pytest.importorskip("skimage")  # the photographs (the GPU job reads them from an .npz instead)

SIZE, SPEED, FRAMES = 64, 4, 8
TRAVEL = (FRAMES - 1) * SPEED


def _hash(picture: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(picture).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def sets() -> dict[str, list[heldout.HeldOutImage]]:
    return {name: heldout.image_set(name, height=SIZE, width=SIZE, travel=TRAVEL) for name in heldout.IMAGE_SETS}


def test_each_set_holds_every_kind_at_the_canvas_size(sets):
    for name, images in sets.items():
        kinds = [i.kind for i in images]
        photos = photo_data.PHOTO_SETS[heldout.IMAGE_SETS[name].photos]
        assert list(dict.fromkeys(kinds)) == list(heldout.KINDS)
        assert kinds.count("gradients") == kinds.count("textures") == 8
        assert kinds.count("drawn") == 8 + heldout.IMAGE_SETS[name].default_sky
        assert kinds.count("photographs") == 2 * len(photos)  # whole and detail views
        assert len({i.name for i in images}) == len(images)
        for image in images:
            assert image.canvas.shape == (SIZE + 2 * TRAVEL, SIZE + 2 * TRAVEL, 3) and image.canvas.dtype == np.uint8
            assert image.canvas.std() > 1, f"{image.name} is blank"
    assert len(photo_data.PHOTO_SETS["heldout"]) >= 8


def test_the_report_and_selection_sets_share_no_picture(sets):
    report = {_hash(i.canvas) for i in sets["heldout"]}
    assert not report & {_hash(i.canvas) for i in sets["selection"]}
    assert not set(photo_data.PHOTO_SETS["heldout"]) & set(photo_data.PHOTO_SETS["selection"])


def test_the_sets_are_the_same_every_time_and_kinds_can_be_picked():
    first = heldout.image_set("selection", kinds=["gradients", "drawn"], per_kind=2, views=1)
    again = heldout.image_set("selection", kinds=["drawn", "gradients"], per_kind=2, views=1)
    assert [i.name for i in first] == ["drawn 0", "drawn 1", "gradient 0", "gradient 1"]
    assert all(np.array_equal(a.canvas, b.canvas) for a, b in zip(first, again))
    with pytest.raises(ConfigError, match="image kind"):
        heldout.image_set(kinds=["faces"])
    with pytest.raises(ConfigError, match="image set"):
        heldout.image_set("test")


def test_the_photo_sets_are_disjoint_by_name_and_by_pixels(monkeypatch):
    digests = photo_data.check_photo_sets()
    assert len(set(digests.values())) == len(digests)
    # scikit-image's "cat" is "chelsea", a held-out photo: a name check alone would let it into training
    smuggled = {**photo_data.PHOTO_SETS, "train": (*photo_data.PHOTO_SETS["train"], "cat")}
    with pytest.raises(ConfigError, match="'cat' of set 'train' is 'chelsea' \\(heldout\\)"):
        photo_data.check_photo_sets(smuggled)


def test_no_training_dataset_crops_a_held_out_or_selection_photo():
    """Every picture kind training can ask for, alone and all together: the photographs its bank
    may cut from are trainable ones only, by name and by pixels."""
    kept_apart = photo_data.PHOTO_SETS["heldout"] + photo_data.PHOTO_SETS["selection"]
    forbidden = {photo_data.digest(photo_data.load_photo(n)) for n in kept_apart}
    for kinds in [*([k] for k in KINDS), list(KINDS)]:
        data = ProceduralPans(frames=4, height=32, width=32, kinds=kinds, bank_size=len(kinds), length=4)
        sources = data.photos
        assert bool(sources) == any(k in PHOTO_KINDS for k in kinds), kinds
        assert not set(sources) & set(kept_apart)
        assert not {photo_data.digest(photo_data.load_photo(n)) for n in sources} & forbidden
    assert ProceduralPans(frames=4, height=32, width=32).photos == ()  # the first recipe's kinds use none


def test_photos_come_from_the_npz_cache_as_from_scikit_image(tmp_path, monkeypatch):
    digests = photo_data.save_photo_cache(tmp_path / "photos.npz")
    assert set(digests) == {n for group in photo_data.PHOTO_SETS.values() for n in group}
    monkeypatch.setattr(photo_data, "_cache", {})
    monkeypatch.setenv(photo_data.CACHE_ENV, str(tmp_path / "photos.npz"))
    for name, sha in digests.items():
        assert photo_data.digest(photo_data.load_photo(name)) == sha
    with pytest.raises(ConfigError, match="not in"):
        photo_data.load_photo("cat")


@pytest.mark.parametrize("photo", ["astronaut", "coffee", "camera", "coins"])
def test_the_measure_reads_true_pans_of_a_held_out_photograph_right(sets, photo):
    (image,) = [i for i in sets["heldout"] if i.name == photo]
    pans = heldout.true_pans(image.canvas, frames=FRAMES, height=SIZE, width=SIZE, speed=SPEED)
    assert np.array_equal(pans["static"][0], np.asarray(heldout.start_image(image.canvas, SIZE, SIZE)))
    for direction in CONTENT:
        dx, dy = content_motion(pans[direction])
        assert follows(direction, (dx, dy)), (photo, direction, dx, dy)
        along = dx * CONTENT[direction][0] + dy * CONTENT[direction][1]
        assert 0.5 * TRAVEL < along < 1.3 * TRAVEL, (photo, direction, along)  # the measure reads ~30 % short
    assert np.hypot(*content_motion(pans["static"])) < 0.5


def test_a_gradient_along_its_constant_axis_is_not_measurable():
    """A vertical ramp panned sideways does not change: no measure can read it, so the benchmark
    must not count it against a model (``measurable_images``)."""
    from benchmarks.camera_following import REFERENCE, measurable_images

    side = SIZE + 2 * TRAVEL
    ramp = np.repeat(np.linspace(0, 255, side)[:, None, None], side, axis=1).repeat(3, axis=2).astype(np.uint8)
    rows = []
    for name, canvas in (("ramp", ramp), ("astronaut", heldout.image_set(kinds=["photographs"], views=1)[0].canvas)):
        pans = heldout.true_pans(canvas, frames=FRAMES, height=SIZE, width=SIZE, speed=SPEED)
        rows += [{"source": REFERENCE, "kind": "k", "camera": d, "image": name, "motion": content_motion(pans[d])}
                 for d in CONTENT]  # fmt: skip
    assert measurable_images(rows) == {"astronaut"}


def test_the_held_out_textures_are_the_training_generators_heldout_stream():
    (first,) = heldout.image_set(kinds=["textures"], per_kind=1, travel=TRAVEL)
    from ruyi.training.data.pictures import as_uint8, textured_canvas
    from ruyi.training.data.procedural import SPLITS

    rng = np.random.default_rng([heldout.IMAGE_SETS["heldout"].seed, SPLITS["heldout"], 0])
    assert np.array_equal(first.canvas, as_uint8(textured_canvas(rng, *first.canvas.shape[:2], TEXTURE_KINDS[0])))
