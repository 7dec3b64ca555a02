"""Training data: the pan convention of procedural_pans, and mp4 folders with bad clips in them."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
import torch

from ruyi.conditioning.buckets import bucket_size
from ruyi.errors import ConfigError, InputError
from ruyi.io import write_mp4
from ruyi.training.data import ClipFolder, ProceduralPans, collate_clips
from ruyi.training.data.pictures import KINDS, TEXTURE_KINDS, textured_canvas
from ruyi.training.data.procedural import pan_clip

# film convention, written out here so a flipped table in the code under test fails
CONTENT = {"static": (0, 0), "left": (1, 0), "right": (-1, 0), "up": (0, 1), "down": (0, -1)}


def _shift(a: np.ndarray, b: np.ndarray, max_shift: int = 12) -> tuple[int, int]:
    """The (dx, dy) that makes frame b equal frame a moved by (dx, dy), by exhaustive search."""
    best, where = None, (0, 0)
    h, w = a.shape[:2]
    m = max_shift
    for dy in range(-m, m + 1):
        for dx in range(-m, m + 1):
            err = np.abs(b[m + dy : h - m + dy, m + dx : w - m + dx].astype(int) - a[m : h - m, m : w - m].astype(int)).mean()
            if best is None or err < best:
                best, where = err, (dx, dy)
    return where


def _moved_error(a: np.ndarray, b: np.ndarray, dx: int, dy: int) -> float:
    """Mean |b(x + dx, y + dy) - a(x, y)| over the overlap: 0 when the content moved by (dx, dy)."""
    h, w = a.shape[:2]
    src = a[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)].astype(int)
    dst = b[max(0, dy) : h - max(0, -dy), max(0, dx) : w - max(0, -dx)].astype(int)
    return float(np.abs(dst - src).mean())


@pytest.mark.parametrize(
    ("camera", "content"), [("left", (1, 0)), ("right", (-1, 0)), ("up", (0, 1)), ("down", (0, -1)), ("static", (0, 0))]
)
def test_film_convention_of_the_pans(camera, content):
    rng = np.random.default_rng(0)
    canvas = rng.random((80, 90, 3))
    clip = pan_clip(canvas, frames=5, height=40, width=50, direction=camera, speed=3)
    for f in range(4):
        # content that sat at x in frame f sits at x + 3 * dx in frame f + 1
        assert _shift(clip[f], clip[f + 1]) == (3 * content[0], 3 * content[1])


def test_procedural_samples_are_reproducible_and_the_heldout_split_differs():
    train = ProceduralPans(frames=8, height=64, width=96, length=10)
    again = ProceduralPans(frames=8, height=64, width=96, length=10)
    heldout = ProceduralPans(frames=8, height=64, width=96, length=10, split="heldout")
    a, b, c = train[3], again[3], heldout[3]
    assert a["video"].shape == (3, 8, 64, 96) and a["video"].dtype == torch.uint8
    assert torch.equal(a["video"], b["video"]) and a["camera"] == b["camera"]
    assert not torch.equal(a["video"], c["video"])
    labels = {train[i]["camera"] for i in range(10)} | {heldout[i]["camera"] for i in range(10)}
    assert labels <= {"static", "left", "right", "up", "down", "auto"} and len(labels) >= 3


def test_a_sample_does_not_depend_on_the_order_or_the_worker_that_draws_it():
    data = ProceduralPans(frames=4, height=32, width=48, length=40, bank_size=8)
    forward = [data[i]["video"] for i in range(40)]
    worker = pickle.loads(pickle.dumps(data))  # what a DataLoader worker receives: an empty texture cache
    assert not worker.bank._textures
    for i in reversed(range(40)):
        assert torch.equal(worker[i]["video"], forward[i]), i
    # the samples really vary: not one texture crop repeated
    assert len({v[:, 0].numpy().tobytes() for v in forward}) == 40


def test_the_heldout_bank_shares_no_texture_with_training():
    size = {"frames": 4, "height": 32, "width": 48, "bank_size": 8}
    train, heldout = ProceduralPans(**size), ProceduralPans(**size, split="heldout")
    train_textures = [train.bank.texture(k) for k in range(8)]
    for k in range(8):
        held = heldout.bank.texture(k)
        assert all(not np.array_equal(held, t) for t in train_textures)
    # another seed gives another bank too
    other = ProceduralPans(**size, seed=1)
    assert not np.array_equal(other.bank.texture(0), train_textures[0])


@pytest.mark.parametrize(("seed", "kinds", "tone_prob"), [(0, TEXTURE_KINDS, 0.0), (1, TEXTURE_KINDS, 0.0), (0, KINDS, 0.5)])
def test_each_sample_pans_as_its_label_says(seed, kinds, tone_prob):
    """The clips of the dataset itself (bank crops, flips, channel orders): every frame is the previous
    one moved by the labelled speed in the film-convention direction."""
    if "photo" in kinds:
        pytest.importorskip("skimage")
    speeds = (1, 2, 3, 5)
    data = ProceduralPans(frames=4, height=48, width=64, length=60, seed=seed, pixels_per_frame=speeds, auto_prob=0.0,
                          bank_size=max(8, len(kinds)), kinds=kinds, tone_prob=tone_prob)  # fmt: skip
    seen = set()
    for i in range(60):
        item = data[i]
        camera, speed = item["camera"], speeds[int(item["motion"]) - 1]
        seen.add(camera)
        clip = item["video"].permute(1, 2, 3, 0).numpy()
        dx, dy = CONTENT[camera]
        for f in range(3):
            # exact at the labelled move; a move the other way (the sign convention flipped) is not
            assert _moved_error(clip[f], clip[f + 1], speed * dx, speed * dy) == 0, (i, camera, speed)
            # (a window showing only a shapes picture's gradient background does not change along x)
            flat = not np.diff(clip[f].astype(int), axis=1 if dx else 0).any()
            if camera != "static" and not flat:
                assert _moved_error(clip[f], clip[f + 1], -speed * dx, -speed * dy) > 0, (i, camera, speed)
    assert seen == {"static", "left", "right", "up", "down"}


def test_the_first_recipes_bank_is_unchanged_by_the_varied_kinds():
    """experiment=tiny_pans draws the same 48 textures and samples as when the shipped default was
    trained (digests taken before pictures.py and tone_prob existed)."""
    data = ProceduralPans(frames=8, height=64, width=64, bank_size=48)
    textures = hashlib.sha256(b"".join(data.bank.texture(k).tobytes() for k in range(48))).hexdigest()[:16]
    assert textures == "16829700719dbbf8"
    assert hashlib.sha256(data[5]["video"].numpy().tobytes()).hexdigest()[:16] == "38594b143d90f5d8"


@pytest.mark.parametrize("kind", KINDS)
def test_every_picture_kind_is_a_reproducible_picture_in_range(kind):
    if kind in ("photo", "blend"):
        pytest.importorskip("skimage")
    pictures = [textured_canvas(np.random.default_rng([3, i]), 70, 90, kind) for i in range(4)]
    again = textured_canvas(np.random.default_rng([3, 0]), 70, 90, kind)
    for picture in pictures:
        assert picture.shape == (70, 90, 3) and picture.min() >= 0 and picture.max() <= 1
    assert np.array_equal(pictures[0], again)
    assert len({p.tobytes() for p in pictures}) == 4


def test_pan_clip_refuses_a_canvas_too_small_for_the_pan():
    with pytest.raises(ValueError, match="too small"):
        pan_clip(np.zeros((40, 60, 3)), frames=5, height=40, width=50, direction="left", speed=3)
    # the same canvas holds a vertical-free static clip
    assert pan_clip(np.zeros((40, 60, 3)), frames=5, height=40, width=50, direction="static", speed=3).shape == (5, 40, 50, 3)


def test_procedural_options_are_checked():
    with pytest.raises(ConfigError, match="split"):
        ProceduralPans(split="test")
    with pytest.raises(ConfigError, match="pixels_per_frame"):
        ProceduralPans(pixels_per_frame=[1, 2])
    with pytest.raises(ConfigError, match="texture kind"):
        ProceduralPans(kinds=["plasma"])
    with pytest.raises(ConfigError, match="bank_size"):
        ProceduralPans(bank_size=2)
    with pytest.raises(ConfigError, match="tone_prob"):
        ProceduralPans(tone_prob=1.5)


def _clip(path, frames=16, size=(48, 80), seed=0):
    g = torch.Generator().manual_seed(seed)
    write_mp4(torch.rand(1, 3, frames, *size, generator=g), path, fps=24)
    return path


def test_folder_reads_buckets_labels_and_skips_bad_clips(tmp_path, caplog):
    _clip(tmp_path / "a.mp4")
    (tmp_path / "sub").mkdir()
    _clip(tmp_path / "sub" / "b.mp4", size=(80, 48), seed=1)
    _clip(tmp_path / "short.mp4", frames=4)
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all" * 10)
    (tmp_path / "labels.csv").write_text("file,camera,motion\na.mp4,left,2\n")
    data = ClipFolder(path=str(tmp_path), frames=16, base_resolution=384)
    assert len(data) == 2 and data.skipped == 2
    first, second = data[0], data[1]
    assert (first["camera"], first["motion"]) == ("left", "2")
    assert (second["camera"], second["motion"]) == ("auto", "auto")
    # landscape and portrait clips land in the aspect buckets inference picks for such an image
    assert first["video"].shape[1:] == (16, *bucket_size((80, 48), 384)) == (16, 288, 480)
    assert second["video"].shape[1:] == (16, *bucket_size((48, 80), 384)) == (16, 480, 288)
    with pytest.raises(ConfigError, match="different sizes"):
        collate_clips([first, second])

    # a clip that breaks after the scan is skipped and counted, the epoch goes on
    (tmp_path / "a.mp4").write_bytes(b"gone")
    again = data[0]
    assert again["key"].startswith("sub/b.mp4") and data.skipped == 3


def test_folder_errors_name_the_fix(tmp_path):
    with pytest.raises(InputError, match="not a folder"):
        ClipFolder(path=str(tmp_path / "nope"))
    with pytest.raises(InputError, match="no readable mp4"):
        ClipFolder(path=str(tmp_path))
    _clip(tmp_path / "a.mp4")
    # a label that no table key can hold (a new label such as "sideways" is finetune=control's to teach)
    (tmp_path / "labels.csv").write_text("file,camera,motion\na.mp4,Side-Ways,2\n")
    with pytest.raises(ConfigError, match="labels.csv:2"):
        ClipFolder(path=str(tmp_path))
    (tmp_path / "labels.csv").write_text("file,camera,motion\na.mp4,sideways,5\n")
    with pytest.raises(ConfigError, match="labels.csv:2"):
        ClipFolder(path=str(tmp_path))
    (tmp_path / "labels.csv").write_text("file,camera,motion\na.mp4,sideways,2\n")
    assert ClipFolder(path=str(tmp_path)).camera_labels == {"sideways"}


@pytest.mark.parametrize("end_frame_prob", [0.0, 1.0])
def test_conditioned_clips_carry_the_inference_layout_as_whole_numbers(end_frame_prob):
    """The workers' uint8 layout, written out here: the start frame in every frame (the last frame
    too when it conditions), mask 0 on conditioning frames and 255 elsewhere; collation makes it
    contiguous, and the float layout inference builds maps back onto it exactly."""
    from ruyi.conditioning.image import StartEndFrames
    from ruyi.training.inputs import ConditionedClips

    data = ProceduralPans(frames=8, height=32, width=48, bank_size=4, length=4)
    conditioning = StartEndFrames()
    item = ConditionedClips(data, conditioning, end_frame_prob=end_frame_prob)[1]
    video = item["video"]  # uint8 (3, F, H, W)
    want = video[:, :1].repeat(1, 8, 1, 1)
    want_mask = torch.full((1, 8, 32, 48), 255, dtype=torch.uint8)
    want_mask[:, 0] = 0
    if end_frame_prob:
        want[:, -1] = video[:, -1]
        want_mask[:, -1] = 0
    batch = collate_clips([item, item])
    assert batch["cond_video"].dtype == torch.uint8 and batch["cond_video"].is_contiguous()
    assert torch.equal(batch["cond_video"][0], want) and torch.equal(batch["cond_mask"][0], want_mask)
    frames = video.permute(1, 2, 3, 0).numpy()
    layout = conditioning.prepare(frames[0], frames[-1] if end_frame_prob else None, frames=8, height=32, width=48)
    assert torch.equal((layout.video[0] * 255).round().to(torch.uint8), want)


def test_the_v2_recipe_is_tiny_pans_with_more_varied_pictures():
    """experiment=tiny_pans_v2 changes the data's pictures alone (kinds, bank, tone): same model,
    batch, steps and schedule as the recipe of the shipped default."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    configs = Path(__file__).resolve().parents[1] / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base=None):
        old, new = (OmegaConf.to_container(compose("train", overrides=[f"experiment={e}", "output_dir=/x"]), resolve=True)
                    for e in ("tiny_pans", "tiny_pans_v2"))  # fmt: skip

    def flat(tree: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in tree.items():
            out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
        return out

    a, b = flat(old), flat(new)
    assert {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)} == {"data.kinds", "data.bank_size", "data.tone_prob"}
    assert set(b["data.kinds"]) == set(KINDS) and b["data.bank_size"] % len(b["data.kinds"]) == 0
    assert a["trainer.max_steps"] == 3527 and a["data.kinds"] == list(TEXTURE_KINDS)
