"""Video output (mp4 through imageio-ffmpeg and PNG frames, both atomic, never destroying the
user's files) and image input (16-bit and float images, numpy scalars)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ruyi import io

REPO = Path(__file__).resolve().parents[1]


def _video(frames=16, height=64, width=48):
    g = torch.Generator().manual_seed(0)
    # smooth content so that H.264 keeps it close
    base = torch.linspace(0, 1, width)[None, None, None, :].expand(1, 3, frames, height, width).clone()
    base[:, 1] *= torch.linspace(0.2, 0.8, frames)[None, :, None, None]
    return (base + 0.02 * torch.rand(base.shape, generator=g)).clamp(0, 1)


def test_mp4_round_trip(tmp_path):
    video = _video()
    path = io.write_mp4(video, tmp_path / "sub" / "clip.mp4", fps=24)
    frames, fps = io.read_mp4(path)
    assert frames.shape == (16, 64, 48, 3) and fps == pytest.approx(24)
    expected = io.to_frames(video).astype(np.float32)
    assert np.abs(frames.astype(np.float32) - expected).mean() < 6.0
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["clip.mp4"]


def _fake_ffmpeg(monkeypatch, script: str) -> None:
    """Replace the encoder by a shell script: it reads the frames, writes ``partial`` into the
    target, then does what ``script`` says (print, exit...)."""

    def command(width, height, fps, target):
        return ["sh", "-c", f"cat > /dev/null; printf partial > \"$0\"; {script}", target]

    monkeypatch.setattr(io, "ffmpeg_command", command)


@pytest.mark.parametrize(
    ("script", "error", "words"),
    [
        # the encoder ran out of space: one line naming the disk and the size (encoded again in memory)
        ("echo 'Error writing trailer: No space left on device' >&2; exit 228", ValueError, "no space left on /"),
        ("echo 'Conversion failed!' >&2; exit 1", RuntimeError, "exit status 1): Conversion failed!"),
        ("exit 0", RuntimeError, "holds 0 of 16 frames"),  # a clean exit, but not a video: counted, refused
    ],
)
def test_a_failed_encoder_leaves_the_old_video(tmp_path, monkeypatch, script, error, words):
    target = tmp_path / "clip.mp4"
    target.write_bytes(b"an earlier video")
    _fake_ffmpeg(monkeypatch, script)
    monkeypatch.setattr(io, "encoded_size", lambda frames, fps: 3_000_000)
    if words == "holds 0 of 16 frames":
        monkeypatch.setattr("imageio_ffmpeg.count_frames_and_secs", lambda path: (0, 0.0))
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")) as caught:
        io.write_mp4(_video(), target)
    if error is ValueError:
        assert "the video needs ~3.0 MB; free space or choose another output" in str(caught.value)
    assert target.read_bytes() == b"an earlier video"
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_png_frames(tmp_path):
    video = _video(frames=8)
    folder = io.write_video(video, tmp_path / "frames")
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"frame_{i:04d}.png" for i in range(8)]
    first = np.asarray(Image.open(folder / names[0]))
    assert np.array_equal(first, io.to_frames(video)[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]


def test_bad_video_shape_is_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"expected a video \(1, 3, F, H, W\)"):
        io.write_mp4(torch.zeros(3, 4, 8, 8), tmp_path / "x.mp4")
    assert list(tmp_path.iterdir()) == []


def test_output_path_checks(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        io.check_output_path(tmp_path / "file" / "out.mp4")
    (tmp_path / "dir.mp4").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        io.check_output_path(tmp_path / "dir.mp4")


def test_procedural_image_is_deterministic():
    a, b = io.procedural_image(160, 96), io.procedural_image(160, 96)
    assert a.size == (160, 96) and np.array_equal(np.asarray(a), np.asarray(b))
    assert np.asarray(a).std() > 10  # not a flat colour


# -- data safety: frames folders, the named file, published folders ---------------------------
def test_png_frames_into_an_existing_empty_folder_keep_the_folder(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    inode = folder.stat().st_ino
    io.write_video(_video(frames=8), folder)
    assert sorted(p.name for p in folder.iterdir()) == [f"frame_{i:04d}.png" for i in range(8)]
    assert folder.stat().st_ino == inode  # the user's folder itself, filled; no temp folder left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]


def test_png_frames_refuse_a_folder_with_other_files(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.txt").write_text("years of work")
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="mine"):
            io.write_video(_video(frames=8), folder, overwrite=overwrite)
    assert [p.name for p in folder.iterdir()] == ["thesis.txt"]
    assert (folder / "thesis.txt").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_overwrite_replaces_only_frames_and_drops_stale_ones(tmp_path):
    folder = tmp_path / "frames"
    io.write_video(_video(frames=16), folder)
    with pytest.raises(ValueError, match="is a folder that is not empty"):
        io.write_video(_video(frames=8), folder)
    video = _video(frames=8) * 0.5
    io.write_video(video, folder, overwrite=True)
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"frame_{i:04d}.png" for i in range(8)]  # frames 8..15 of the longer video are gone
    assert np.array_equal(np.asarray(Image.open(folder / names[0])), io.to_frames(video)[0])


def test_output_check_probes_and_leaves_nothing(tmp_path):
    assert io.check_output_path(tmp_path / "a" / "b" / "v.mp4") == tmp_path / "a" / "b" / "v.mp4"
    assert io.check_output_path(tmp_path / "new_frames") == tmp_path / "new_frames"
    assert list(tmp_path.iterdir()) == []  # no folders made, the probe file removed


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs /proc: a folder even root cannot write in")
def test_output_in_a_folder_nobody_can_write_fails_up_front():
    with pytest.raises(ValueError, match="cannot write in /proc"):
        io.check_output_path("/proc/ruyi.mp4")


def test_named_mp4_is_replaced_atomically(tmp_path):
    target = tmp_path / "clip.mp4"
    target.write_bytes(b"an earlier video")
    io.write_video(_video(frames=8), target)
    assert io.read_mp4(target)[0].shape[0] == 8
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_publish_folder_never_replaces_content(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    tmp = tmp_path / ".tmp"
    tmp.mkdir()
    (tmp / "new.txt").write_text("new")
    with pytest.raises(ValueError, match="nothing was replaced"):
        io.publish_folder(tmp, target)
    assert [p.name for p in target.iterdir()] == ["keep.txt"] and (target / "keep.txt").read_text() == "mine"


def test_tiny_checkpoint_goes_into_an_empty_folder_with_plain_file_modes(tmp_path):
    """Created only where nothing or an empty folder is; files readable like any other (not 0600)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from ruyi.components import ModelSource
    from ruyi.checkpoints import is_checkpoint, resolve_checkpoint

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        preset = OmegaConf.to_container(compose(config_name="infer").model, resolve=True)
    path = tmp_path / "empty"
    path.mkdir()
    assert resolve_checkpoint(ModelSource(path=path, create_if_missing=True, arch=preset)) == path
    assert is_checkpoint(path) and sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
    weights = path / "transformer" / "diffusion_pytorch_model.safetensors"
    assert weights.stat().st_mode & 0o777 == io.umask_mode(directory=False)
    assert path.stat().st_mode & 0o777 == io.umask_mode(directory=True)


# -- inputs: 16-bit and float images, numpy scalars --------------------------------------------
def _png_rgb16(pixels: np.ndarray) -> bytes:
    """A 48-bit RGB PNG (Pillow cannot write one)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    height, width, _ = pixels.shape
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _first_frame(image) -> np.ndarray:
    from ruyi.conditioning.image import frames_from_images

    return frames_from_images(image, None, frames=1, height=48, width=64).video[0, :, 0].numpy()


def test_16bit_and_float_images_give_the_8bit_first_frame(tmp_path):
    rng = np.random.default_rng(0)
    smooth = np.linspace(0, 255, 64)[None, :, None] * np.linspace(0.3, 1.0, 48)[:, None, None]
    rgb8 = (smooth * np.array([1.0, 0.8, 0.5])).round().astype(np.uint8)
    Image.fromarray(rgb8).save(tmp_path / "rgb8.png")
    rgb16 = (rgb8.astype(np.int32) * 257 + rng.integers(-128, 128, rgb8.shape)).clip(0, 65535).astype(np.uint16)
    (tmp_path / "rgb16.png").write_bytes(_png_rgb16(rgb16))
    grey8 = rgb8[..., 0]
    Image.fromarray(grey8).save(tmp_path / "grey8.png")
    grey16 = (grey8.astype(np.int32) * 257 + rng.integers(-128, 128, grey8.shape)).clip(0, 65535).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")  # really a 16-bit file

    reference, grey_reference = _first_frame(tmp_path / "rgb8.png"), _first_frame(tmp_path / "grey8.png")
    within = 1 / 255 + 1e-6
    assert np.abs(_first_frame(tmp_path / "rgb16.png") - reference).max() <= within
    assert np.abs(_first_frame(tmp_path / "grey16.png") - grey_reference).max() <= within
    assert np.abs(_first_frame(rgb8.astype(np.float32) / 255) - reference).max() <= within
    assert np.abs(_first_frame(rgb16) - reference).max() <= within  # uint16 array
    assert np.abs(_first_frame(grey8 > 127) - _first_frame(np.where(grey8 > 127, 255, 0).astype(np.uint8))).max() == 0
    assert 0.2 < grey_reference.mean() < 0.8  # the image itself is neither black nor white


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.full((8, 8, 3), 200.0, dtype=np.float32), "float images must lie in \\[0, 1\\]"),
        (np.full((8, 8, 3), np.nan, dtype=np.float32), "float images must lie in \\[0, 1\\]"),
        (np.full((8, 8, 3), 300, dtype=np.int32), "integer images must be uint8"),
        (np.zeros((8, 8, 2), dtype=np.uint8), "array must be \\(H, W, 3\\)"),
    ],
)
def test_unusable_image_arrays_are_named(array, message):
    from ruyi.conditioning.image import load_image

    with pytest.raises(ValueError, match=message):
        load_image(array)


def test_numpy_scalars_are_accepted_wherever_numbers_are(tmp_path):
    from ruyi.conditioning.control import CameraMotionControl
    from ruyi.pipeline import validate_request
    from ruyi.plugins import EnhanceAVideo, LoRAWeights, TeaCache
    from ruyi.samplers.schedulers import DDIMSampler

    image = np.zeros((96, 128, 3), dtype=np.uint8)
    request = validate_request(
        image, control=CameraMotionControl(), sampler=DDIMSampler, frames=np.int64(8),
        base_resolution=np.int32(384), video_size=np.array([64, 96]), steps=np.int64(3), cfg=np.float32(7.5),
        seed=np.uint64(2**64 - 1), camera="left", motion=np.int64(2),
    )  # fmt: skip
    assert (request.frames, request.height, request.width, request.steps) == (8, 64, 96, 3)
    assert (request.guidance_scale, request.seed, request.motion) == (7.5, 2**64 - 1, "2")
    plain = {k: v for k, v in vars(request).items() if not isinstance(v, tuple) and v is not None}
    assert all(type(v) in (int, float, str) for v in plain.values())
    assert request.cameras == ("left",) and request.motions == ("2",) and type(request.segments[0].frames) is int
    from safetensors.torch import save_file

    save_file({"blocks.0.attn1.to_k.lora_A.weight": torch.zeros(1, 2)}, str(tmp_path / "l.safetensors"))
    assert LoRAWeights(path=tmp_path / "l.safetensors", strength=np.float32(1.25)).strength == 1.25
    cache = TeaCache(threshold=np.float32(0.25), skip_start_steps=np.int64(2))
    assert (cache.threshold, cache.skip_start_steps) == (0.25, 2)
    assert EnhanceAVideo(weight=np.float32(2.0), skip_end_steps=np.int64(1)).skip_end_steps == 1
    assert io.check_fps(np.int64(24)) == 24.0


def test_numpy_scalars_through_the_python_api(fixture_dir):
    """``ruyi.load_pipeline`` and the call take numpy scalars and give what plain numbers give."""
    import ruyi

    def video(n):
        pipe = ruyi.load_pipeline(fixture_dir, skip_steps=n(1), vae_tile_size=n(32), vae_tile_overlap=n(8), device="cpu")
        image = np.linspace(0, 1, 64 * 64 * 3, dtype=np.float32).reshape(64, 64, 3)
        return pipe(image, frames=n(8), steps=n(2), video_size=[n(64), n(64)], cfg=n(7), seed=n(1), progress=False)

    with_numpy = video(np.int64)
    assert with_numpy.shape == (1, 3, 8, 64, 64)
    assert torch.equal(with_numpy, video(int))


# -- images as people have them: EXIF orientation, colour modes -------------------------------
def _sideways_photo() -> np.ndarray:
    """Stored pixels (32 x 64) of a photo whose content is not symmetric: a red left third."""
    stored = np.full((32, 64, 3), 200, dtype=np.uint8)
    stored[:, :20] = (220, 30, 30)
    stored[:8, :] = (30, 30, 220)  # a blue top band: tells a rotation from a flip
    return stored


@pytest.mark.parametrize(("orientation", "upright"), [
    (6, lambda a: np.rot90(a, k=-1)),  # a phone's portrait photo: shown rotated 90° clockwise
    (8, lambda a: np.rot90(a, k=1)),
    (3, lambda a: np.rot90(a, k=2)),
    (2, lambda a: a[:, ::-1]),
])  # fmt: skip
def test_exif_orientation_is_applied_and_logged(tmp_path, caplog, orientation, upright):
    from ruyi.conditioning.image import load_image

    stored = _sideways_photo()
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif)
    with caplog.at_level("INFO", logger="ruyi.conditioning.image"):
        image = load_image(path)
    expected = upright(stored)
    assert image.size == (expected.shape[1], expected.shape[0])
    assert np.abs(np.asarray(image, dtype=np.int16) - expected).mean() < 4  # JPEG, flat colours
    assert "applied its EXIF orientation" in caplog.text and "photo.jpg" in caplog.text
    # a PIL image a Python caller opened itself is turned the same way
    with Image.open(path) as opened:
        assert np.array_equal(np.asarray(load_image(opened)), np.asarray(image))


def test_images_without_orientation_and_other_colour_modes_keep_loading(tmp_path):
    from PIL import ImageCms

    from ruyi.conditioning.image import load_image

    stored = _sideways_photo()
    Image.fromarray(stored).save(tmp_path / "plain.jpg", quality=95)
    assert load_image(tmp_path / "plain.jpg").size == (64, 32)  # no EXIF: untouched
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95, exif=exif)
    Image.fromarray(stored).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(stored).convert("LA").save(tmp_path / "grey_alpha.png")
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(stored).save(tmp_path / "icc.png", icc_profile=srgb)
    assert load_image(tmp_path / "cmyk.jpg").size == (32, 64)  # CMYK with an orientation: upright RGB
    for name in ("cmyk.jpg", "palette.png", "grey_alpha.png", "icc.png"):
        image = load_image(tmp_path / name)
        assert image.mode == "RGB" and np.asarray(image).std() > 10, name
    assert np.array_equal(np.asarray(load_image(tmp_path / "icc.png")), stored)
