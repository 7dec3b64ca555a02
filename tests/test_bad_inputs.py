"""Every bad input a user can give, one table row each: the command line, the expected exit code,
words the one-line message must hold, and the files that must stay untouched.

Rows run in-process the way ``scripts/infer.py`` runs them (override check, compose, ``run``).
``preflight`` rows must fail before any model is built: ``build`` (and the checkpoint lookup) are
replaced by a function that fails the test, and the check must take well under a second of CPU time. The other rows fail
while building (checkpoint contents, LoRA files), still before any generation. Each row's working
folder holds sentinel files (a non-empty output folder, a folder that is not a checkpoint, an
existing video) that must come out byte for byte the same, with nothing new beside them.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image
from safetensors.torch import load_file, save_file

from ruyi import cli
from ruyi.errors import RuyiUserError
from ruyi.overrides import compose_command_line

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
BASE = ["model=ruyi_tiny", "video_size=[64,64]", "frames=8", "steps=2", "progress=false", "model.path={tiny}", "output={tmp}/v.mp4"]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass(frozen=True)
class Case:
    argv: tuple[str, ...]  # "{tiny}", "{inputs}" and "{tmp}" are filled in
    words: tuple[str, ...]  # all must appear in the one-line message
    code: int = 2
    preflight: bool = True  # fails before any model is built
    skip: str = ""  # a reason to skip on this machine, decided at collection
    cwd_is_tmp: bool = False
    extra_keep: tuple[str, ...] = field(default=())  # files outside {tmp} that must survive


def case(*argv: str, words: str | tuple[str, ...], **kw) -> Case:
    return Case(tuple(argv), (words,) if isinstance(words, str) else words, **kw)


CASES = {
    # -- numbers: type, finiteness, range (numpy scalars are accepted, see test_io) ------------
    "frames=12": case("frames=12", words="frames=12 is invalid; use 1 or a multiple of 8 up to 1128"),
    # beyond one segment (120) a video continues in segments, up to 10 of them
    "frames beyond the maximum": case("frames=1136", words=("frames=1136 is beyond the maximum 1128", "10 segments of 120",
                                                            "errors add up")),
    "frames=129": case("frames=129", words="frames=129 is invalid"),
    "frames=0": case("frames=0", words="frames=0 is invalid"),
    "frames=5 rounding down": case("frames=5", "frames_rounding=down", words="frames=5 is invalid"),
    "frames_rounding=up": case("frames_rounding=up", words="frames_rounding='up' is not one of error, down"),
    "frames=abc": case("frames=abc", words="frames='abc' must be an integer"),
    "steps=0": case("steps=0", words=("steps=0 must be an integer in [1, 1000]", "DDIM")),
    "steps=5000": case("steps=5000", words="steps=5000 must be an integer in [1, 1000]"),
    "steps=1.5": case("steps=1.5", words="steps=1.5 must be an integer"),
    "pndm steps=2": case("sampler=pndm", words=("steps=2 must be an integer in [4, 1000]", "sampler PNDM needs at least 4")),
    "cfg=-1": case("cfg=-1", words="cfg=-1 must be a number in [0, 20]"),
    "cfg=inf": case("cfg=inf", words="cfg=inf must be a finite number in [0, 20]"),
    "cfg=1e30": case("cfg=1e30", words=("cfg=1e+30 must be a number in [0, 20]", "the original uses 7.0")),
    "cfg=nan": case("cfg=nan", words="cfg=nan must be a finite number"),
    "seed=2**64": case("seed=18446744073709551616", words=("seed=18446744073709551616 must be an integer", "below 2**64")),
    "seed=-1": case("seed=-1", words="seed=-1 must be an integer in [0, 18446744073709551615]"),
    "seed=1.5": case("seed=1.5", words="seed=1.5 must be an integer"),
    "fps=-24": case("fps=-24", words="fps=-24 must be a number > 0 and <= 240"),
    "fps=0": case("fps=0", words="fps=0 must be a number > 0"),
    "fps=inf": case("fps=inf", words="fps=inf must be a finite number"),
    "base_resolution=1024": case("base_resolution=1024", words="base_resolution=1024 must be an integer in [384, 896]"),
    "video_size=[60,64]": case("video_size=[60,64]", words="video_size=[60, 64] is invalid"),
    "video_size=16": case("video_size=16", words="video_size=16 is invalid; give [height, width]"),
    "video_size=abc": case("video_size=abc", words="video_size='abc' is invalid"),
    "video_size=[8,8] below the smallest": case("video_size=[8,8]", words="video_size=8 must be an integer in [16, 2048]"),
    "video_size=[0,64]": case("video_size=[0,64]", words="video_size=0 must be an integer in [16, 2048]"),
    "video_size=[4096,4096]": case("video_size=[4096,4096]", words="video_size=4096 must be an integer in [16, 2048]"),
    "camera=sideways": case("camera=sideways", words="camera='sideways' is not one of static, left, right, up, down, auto"),
    "motion=5": case("motion=5", words="motion='5' is not one of 1, 2, 3, 4, auto"),
    "skip_steps=-2": case("skip_steps=-2", words="skip_steps=-2 must be an integer >= 0"),
    "overwrite=maybe": case("overwrite=maybe", words="overwrite='maybe' must be true or false"),
    # -- components, device, precision -----------------------------------------------------
    "dtype=float8": case("dtype=float8", words="dtype='float8' is not one of"),
    "device=tpu": case("device=tpu", words="device='tpu' is not supported; use auto, cpu, cuda or cuda:N"),
    "device=cuda without a GPU": case("device=cuda", words="no CUDA GPU is visible",
                                      skip="a CUDA GPU is visible" if torch.cuda.is_available() else ""),
    "offload=group on cpu": case("offload=group", words="use_stream=false",
                                 skip="a CUDA GPU is visible" if torch.cuda.is_available() else ""),
    "fp8_dtype=e3m4": case("precision=fp8_lite", "precision.fp8_dtype=e3m4",
                           words="precision.fp8_dtype='e3m4' is not one of e4m3fn, e5m2"),
    "teacache.threshold=inf": case("plugin=[teacache]", "plugin.teacache.threshold=inf", words="plugin.teacache.threshold=inf must be a finite number"),
    "enhance_a_video.weight=nan": case("plugin=[enhance_a_video]", "plugin.enhance_a_video.weight=nan", words="plugin.enhance_a_video.weight=nan"),
    # -- the command line itself (checked before Hydra composes) ---------------------------
    "sampler=foo": case("sampler=foo", words="sampler=foo is not a known sampler; valid names: ddim, dpmpp, euler, euler_a, pndm"),
    "offload=foo": case("offload=foo", words="offload=foo is not a known offload; valid names: group, model, none, sequential"),
    "plugin=[teacach]": case("plugin=[teacach]", words=("plugin=teacach is not a known plugin", "teacache")),
    "teacache=on (old key)": case("teacache=on", words=("teacache is now a plugin chosen in a list: plugin=[teacache]",)),
    "plugin.teacache.threshold unchosen": case("plugin.teacache.threshold=0.2", words=("not chosen", "plugin=[teacache]")),
    "+frame=16": case("+frame=16", words=("+frame=16 adds a key no component reads", "did you mean frames?", "steps")),
    "frame=16": case("frame=16", words=("frame is not a config key (did you mean frames?)", "frames_rounding")),
    "+plugin.teacache.foo=1": case("plugin=[teacache]", "+plugin.teacache.foo=1", words=("adds a key no component reads", "threshold")),
    "seed=1,2 without -m": case("seed=1,2", words="seed=1,2 has several values: add -m"),
    "-m sweep with a bad value": case("-m", "seed=1,2", "sampler=ddim,foo", words="sampler=foo is not a known sampler"),
    # -- images --------------------------------------------------------------------------------
    "image missing": case("image=/no/such.png", words="image=/no/such.png does not exist"),
    "image is a directory": case("image={inputs}", words="is a directory; give an image file"),
    "image truncated": case("image={inputs}/truncated.png", words=("cannot be decoded", "truncated or damaged")),
    "image 100 megapixels": case("image={inputs}/huge.png", words=("larger than 89 megapixels", "10000 x 10000")),
    "image decompression bomb": case("image={inputs}/bomb.png", words="larger than 89 megapixels"),
    "image not an image": case("image={inputs}/text.png", words="is not an image file Pillow can read"),
    "end_image truncated": case("end_image={inputs}/truncated.png", words=("end_image=", "cannot be decoded")),
    # -- the output: never destroy, fail before the run --------------------------------------
    "output=. (working folder)": case("output=.", words="is a folder that is not empty", cwd_is_tmp=True),
    "output=non-empty folder": case("output={tmp}/mine", words=("output=", "mine is a folder that is not empty")),
    "output=non-empty folder overwrite": case("output={tmp}/mine", "overwrite=true",
                                               words="holds files other than frame_*.png"),
    "output under a file": case("output={tmp}/notes.txt/v.mp4", words="notes.txt is a file, not a folder"),
    "output=existing file as folder": case("output={tmp}/notes.txt", words="is an existing file; PNG frames need a new or empty folder"),
    "output=folder named .mp4": case("output={tmp}/clip.mp4", words="clip.mp4 is a folder; give a file path ending in .mp4"),
    "output=clip.gif": case("output={tmp}/clip.gif", words="only .mp4 videos or folders of PNG frames"),
    "output read-only (/proc)": case("output=/proc/ruyi.mp4", words="cannot write in /proc",
                                     skip="" if Path("/proc/self").exists() else "no /proc"),
    # -- keyframes, long videos, video-to-video -----------------------------------------------------
    "keyframe outside the video": case("keyframes=[{{image: {inputs}/good.png, frame: 8}}]",
                                       words="keyframes[0] is at frame 8, outside the video's 8 frames (0..7)"),
    "keyframe at a negative frame": case("keyframes=[{{image: {inputs}/good.png, frame: -1}}]",
                                         words="keyframes[0].frame=-1 must be an integer >= 0"),
    "two keyframes at one frame": case("keyframes=[{{image: {inputs}/good.png, frame: 3}}, {{image: {inputs}/good.png, frame: 3}}]",
                                       words="keyframes[0] and keyframes[1] are both at frame 3"),
    "image and a keyframe at frame 0": case("image={inputs}/good.png", "keyframes=[{{image: {inputs}/good.png, frame: 0}}]",
                                            words="are both at frame 0"),
    "end_image and a keyframe at the last frame": case("end_image={inputs}/good.png",
                                                       "keyframes=[{{image: {inputs}/good.png, frame: 7}}]",
                                                       words="are both at frame 7"),
    "keyframe image truncated": case("keyframes=[{{image: {inputs}/truncated.png, frame: 4}}]",
                                     words=("keyframes[0]=", "truncated or damaged")),
    "keyframe without a frame": case("keyframes=[{{image: {inputs}/good.png}}]", words="must have exactly the keys image and frame"),
    "keyframes not a list": case("keyframes=abc", words="keyframes='abc' is not a list"),
    "video unreadable": case("video={inputs}/text.png", words=("video=", "is not a readable video")),
    "video without frames": case("video={inputs}/empty.mp4", words="empty.mp4 holds no video frames"),
    "video missing": case("video={tmp}/none.mp4", words="none.mp4 does not exist"),
    "video shorter than frames": case("video={inputs}/clip.mp4", "frames=16", words="clip.mp4 holds 8 frames, fewer than frames=16"),
    "strength=0": case("video={inputs}/clip.mp4", "strength=0", words="strength=0 must be a number > 0 and <= 1"),
    "strength=1.5": case("video={inputs}/clip.mp4", "strength=1.5", words="strength=1.5 must be a number > 0 and <= 1"),
    "strength=nan": case("strength=nan", words="strength=nan must be a finite number"),
    "video with pndm": case("video={inputs}/clip.mp4", "sampler=pndm", "steps=4",
                            words="sampler PNDM cannot start from a noised input video"),
    "camera list vs segments": case("frames=40", "segment.frames=16", "camera=[left,up]",
                                    words=("camera lists 2 value(s) but this video has 4 segments",
                                           "frames=40 in segments of 16")),
    "motion list vs one segment": case("motion=[1,2]", words="motion lists 2 value(s) but this video has one segment"),
    "segment.overlap too large": case("segment.overlap=30", words="segment.overlap=30 must be an integer in [1, 29]"),
    "segment.frames=12": case("segment.frames=12", words="segment.frames=12 must be a multiple of 8"),
    "segment.overlap_frames=last": case("segment.overlap_frames=last",
                                        words="segment.overlap_frames='last' is not one of next, previous"),
    "eval=on with keyframes": case("eval=on", "eval.out={tmp}/e.jsonl", "eval.cache={tmp}/cache",
                                   "keyframes=[{{image: {inputs}/good.png, frame: 4}}]",
                                   words="eval=on judges start/end-frame videos of one segment"),
    "output read-only folder": case("output={tmp}/locked/v.mp4", words="cannot write in",
                                    skip="root writes into read-only folders" if IS_ROOT else ""),
    "output empty": case("output=''", words="output is empty"),
    # -- checkpoints (fail while building, before any generation) ---------------------------
    "model.path=non-checkpoint folder": case("model.path={tmp}/mine", preflight=False,
                                             words=("exists but is not a Ruyi checkpoint", "missing: transformer")),
    "model.path=a file": case("model.path={tmp}/notes.txt", preflight=False, words="is a file; point it at the checkpoint folder"),
    "real weights missing": case("model=ruyi_mini_7b", "model.path={tmp}/Ruyi-Mini-7B", preflight=False,
                                 words=("hf download IamCreateAI/Ruyi-Mini-7B --local-dir", "download=true")),
    "embeddings truncated": case("model.path={inputs}/ck_embeddings", preflight=False,
                                 words=("embeddings.safetensors", "re-download it")),
    "CLIP config/weights mismatch": case("model.path={inputs}/ck_clip", preflight=False,
                                         words=("image_encoder/config.json says intermediate_size=48 but the weights say "
                                                "intermediate_size=64", "fc1.weight is [64, 32]")),
    "CLIP image_size vs weights": case("model.path={inputs}/ck_clip_size", preflight=False,
                                       words=("image_encoder do not fit the model", "another shape", "position_embedding")),
    "config num_layers 1e9": case("model.path={inputs}/ck_layers_huge", preflight=False,
                                  words=("transformer/config.json: num_layers=1000000000.0 must be an integer in [1, 512]",)),
    "config num_layers vs weights": case("model.path={inputs}/ck_layers", preflight=False,
                                         words="says num_layers=8 but the weights say num_layers=4"),
    "VAE config latent_channels vs weights": case("model.path={inputs}/ck_vae", preflight=False,
                                                  words="vae/config.json says latent_channels=8 but the weights say latent_channels=16"),
    "integer weight tensors": case("model.path={inputs}/ck_int", preflight=False, words="stored as integers where the model has floats"),
    "transformer weights truncated": case("model.path={inputs}/ck_truncated", preflight=False,
                                          words=("cannot read", "the file is truncated or damaged")),
    # -- LoRA files and strengths ------------------------------------------------------------
    "lora strength nan": case("lora=[{{path: {inputs}/good.safetensors, strength: nan}}]",
                              words="lora strength=nan must be a finite number in [-100, 100]"),
    "lora strength 1e30": case("lora=[{{path: {inputs}/good.safetensors, strength: 1e30}}]",
                               words="must be a number in [-100, 100]"),
    "lora truncated": case("lora=[{{path: {inputs}/truncated.safetensors}}]", words="is not a readable safetensors file"),
    "lora foreign key names": case("lora=[{{path: {inputs}/foreign.safetensors}}]",
                                   words="follow neither the lora_down/lora_up nor the lora_A/lora_B convention"),
    "lora unrelated layers": case("lora=[{{path: {inputs}/unrelated.safetensors}}]", preflight=False,
                                  words="1 of 1 LoRA layers match no transformer weight"),
    "lora mis-shaped": case("lora=[{{path: {inputs}/misshaped.safetensors}}]", preflight=False,
                            words=("has up (5, 4)", "do not fit its weight (32, 32)")),
    # -- LoRA files checked by value, before any layer merges (a NaN LoRA made a black video, exit 0)
    "lora NaN value": case("lora=[{{path: {inputs}/nan.safetensors}}]", preflight=False,
                           words=("'blocks.0.attn1.to_k' holds 1 NaN or infinite values in its up matrix",)),
    "lora alpha not a scalar": case("lora=[{{path: {inputs}/alpha_vector.safetensors}}]", preflight=False,
                                    words="has an alpha of shape (2,); alpha must be one number"),
    "lora alpha inf": case("lora=[{{path: {inputs}/alpha_inf.safetensors}}]", preflight=False, words="has alpha=inf"),
    "lora ranks differ": case("lora=[{{path: {inputs}/ranks.safetensors}}]", preflight=False,
                              words="has rank 4 in its down matrix (4, 32) but 8 in its up matrix (32, 8)"),
    "lora overflows the weights": case("lora=[{{path: {inputs}/huge.safetensors}}]", preflight=False,
                                       words=("overflows its torch.float32 weights", "lower the strength")),
    "lora for another model": case("lora=[{{path: {inputs}/other_model.safetensors}}]",
                                   words=("was trained for model=ruyi_tiny_pans", "pass model=ruyi_tiny_pans")),
}


# -- fixtures: the tiny checkpoint, damaged inputs, sentinel files ----------------------------
def _png(width: int, height: int, depth: int, color: int, rows: bytes, *, truncate: bool = False) -> bytes:
    """A PNG written by hand (Pillow cannot write 16-bit RGB, nor a header larger than its data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    data = zlib.compress(rows)
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", data[: len(data) // 2] if truncate else data)
    return b"\x89PNG\r\n\x1a\n" + body + (b"" if truncate else chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from ruyi.checkpoints.tiny import create_tiny_checkpoint

    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="infer", overrides=["model=ruyi_tiny"])
    return create_tiny_checkpoint(tmp_path_factory.mktemp("models") / "ruyi-tiny", OmegaConf.to_container(cfg.model, resolve=True))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "good.png")
    (folder / "truncated.png").write_bytes((folder / "good.png").read_bytes()[:3000])
    (folder / "huge.png").write_bytes(_png(10000, 10000, 8, 0, b"", truncate=True))
    (folder / "bomb.png").write_bytes(_png(50000, 50000, 8, 0, b"", truncate=True))
    (folder / "text.png").write_text("not an image")
    _videos(folder)
    # checkpoints damaged in one way each
    for name in ("ck_embeddings", "ck_clip", "ck_int", "ck_truncated"):
        shutil.copytree(tiny, folder / name)
    emb = folder / "ck_embeddings" / "embeddings.safetensors"
    emb.write_bytes(emb.read_bytes()[: emb.stat().st_size // 2])
    config = json.loads((folder / "ck_clip" / "image_encoder" / "config.json").read_text())
    (folder / "ck_clip" / "image_encoder" / "config.json").write_text(json.dumps({**config, "intermediate_size": 48}))
    # config.json values out of bounds or unlike the weights: refused before any module is built
    for name, part, change in (("ck_clip_size", "image_encoder", {"image_size": 64}),
                               ("ck_layers_huge", "transformer", {"num_layers": 1e9}),
                               ("ck_layers", "transformer", {"num_layers": 8}),
                               ("ck_vae", "vae", {"latent_channels": 8})):  # fmt: skip
        shutil.copytree(tiny, folder / name)
        path = folder / name / part / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    weights = folder / "ck_int" / "vae" / "diffusion_pytorch_model.safetensors"
    save_file({k: (v * 100).to(torch.int32) for k, v in load_file(str(weights)).items()}, str(weights))
    weights = folder / "ck_truncated" / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    # LoRA files: a good one for strength checks, damaged or foreign ones
    layer = "blocks.0.attn1.to_k"  # a (32, 32) linear of the tiny transformer
    save_file({f"{layer}.lora_A.weight": torch.zeros(4, 32), f"{layer}.lora_B.weight": torch.zeros(32, 4)}, str(folder / "good.safetensors"))
    (folder / "truncated.safetensors").write_bytes((folder / "good.safetensors").read_bytes()[:100])
    save_file({"text_model.encoder.x": torch.zeros(2)}, str(folder / "foreign.safetensors"))
    save_file({"foo.bar.lora_A.weight": torch.zeros(4, 8), "foo.bar.lora_B.weight": torch.zeros(8, 4)}, str(folder / "unrelated.safetensors"))
    save_file({f"{layer}.lora_A.weight": torch.zeros(4, 7), f"{layer}.lora_B.weight": torch.zeros(5, 4)}, str(folder / "misshaped.safetensors"))
    kohya = "lora_unet_blocks_0_attn1_to_k"  # the same layer in the original's key format, with an alpha
    up = torch.full((32, 4), 0.01)
    up[3, 1] = float("nan")
    save_file({f"{layer}.lora_A.weight": torch.full((4, 32), 0.01), f"{layer}.lora_B.weight": up}, str(folder / "nan.safetensors"))
    factors = {f"{kohya}.lora_down.weight": torch.full((4, 32), 0.01), f"{kohya}.lora_up.weight": torch.full((32, 4), 0.01)}
    save_file({**factors, f"{kohya}.alpha": torch.tensor([4.0, 4.0])}, str(folder / "alpha_vector.safetensors"))
    save_file({**factors, f"{kohya}.alpha": torch.tensor(float("inf"))}, str(folder / "alpha_inf.safetensors"))
    save_file({f"{kohya}.lora_down.weight": torch.zeros(4, 32), f"{kohya}.lora_up.weight": torch.zeros(32, 8)},
              str(folder / "ranks.safetensors"))  # fmt: skip
    save_file({f"{kohya}.lora_down.weight": torch.full((4, 32), 1e30), f"{kohya}.lora_up.weight": torch.full((32, 4), 1e30)},
              str(folder / "huge.safetensors"))  # fmt: skip
    # what scripts/train.py records in an exported LoRA, here for a model with another transformer config
    save_file({f"{layer}.lora_A.weight": torch.zeros(4, 32), f"{layer}.lora_B.weight": torch.zeros(32, 4)},
              str(folder / "other_model.safetensors"),
              metadata={"ruyi_model": "ruyi-tiny-pans", "ruyi_model_preset": "ruyi_tiny_pans",
                        "ruyi_transformer_config": "0123456789abcdef"})  # fmt: skip
    return folder


def _videos(folder: Path) -> None:
    """clip.mp4 (8 frames) and empty.mp4 (a container without any frame), for video-to-video rows."""
    import imageio_ffmpeg

    from ruyi.io import write_mp4

    write_mp4(torch.rand(1, 3, 8, 64, 64), folder / "clip.mp4")
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "color=c=black:s=64x64",
                    "-frames:v", "0", "-c:v", "libx264", "-y", str(folder / "empty.mp4")], check=True)  # fmt: skip


def _sentinels(tmp: Path) -> None:
    """The user's files a bad run must leave alone."""
    (tmp / "keep.txt").write_text("the working folder's own file")
    (tmp / "mine").mkdir()
    (tmp / "mine" / "thesis.txt").write_text("years of work")
    (tmp / "notes.txt").write_text("a file, not a folder")
    (tmp / "clip.mp4").mkdir()
    (tmp / "v.mp4").write_bytes(b"an earlier video")  # the output file: a failed run must not replace it
    (tmp / "locked").mkdir(mode=0o555)


def _snapshot(*folders: Path) -> dict[str, tuple]:
    """Every path under ``folders`` with its size, mtime and (for small files) content."""
    state = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            stat = path.lstat()
            content = path.read_bytes() if path.is_file() and stat.st_size < 4096 else None
            state[str(path)] = (path.is_dir(), stat.st_size, stat.st_mtime_ns, stat.st_mode, content)
    return state


def _invoke(argv: list[str], capsys) -> tuple[int, str, float]:
    """What ``scripts/infer.py ARGV`` does, in-process: the override check (which composes the
    config), then ``run``. Also returns the CPU seconds ``run`` took (0 if it did not run)."""
    try:
        cfg = compose_command_line(argv, config_dir=CONFIGS, config_name="infer")
    except RuyiUserError as err:
        return 2, f"error: {err}\n", 0.0
    began = time.process_time()
    code = cli.run(cfg)
    return code, capsys.readouterr().err, time.process_time() - began


class _Built(Exception):
    pass


@pytest.fixture(scope="module")
def warm(tiny, tmp_path_factory):
    """One valid pre-flight first, so the CPU times below measure checks, not first imports."""
    out = tmp_path_factory.mktemp("warm") / "v.mp4"
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="infer", overrides=[b.format(tiny=tiny, tmp=out.parent) for b in BASE])
    real = cli.build
    cli.build = lambda *a, **k: (_ for _ in ()).throw(_Built())
    try:
        with pytest.raises(_Built):
            cli._run(cfg)
    finally:
        cli.build = real


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tiny, inputs, warm, tmp_path, capsys, monkeypatch):
    row = CASES[name]
    if row.skip:
        pytest.skip(row.skip)
    _sentinels(tmp_path)
    fill = {"tiny": tiny, "inputs": inputs, "tmp": tmp_path}
    argv = [a.format(**fill) for a in row.argv]
    keys = {a.lstrip("+").split("=")[0] for a in argv}
    flags = [a for a in argv if a.startswith("-") and "=" not in a]  # -m goes first, as on a command line
    argv = flags + [b.format(**fill) for b in BASE if b.split("=")[0] not in keys] + [a for a in argv if a not in flags]
    if row.cwd_is_tmp:
        monkeypatch.chdir(tmp_path)
    if row.preflight:
        def no_model(*args, **kwargs):
            raise AssertionError("a model was built although the input could be checked before")

        monkeypatch.setattr(cli, "build", no_model)
        monkeypatch.setattr(cli, "resolve_checkpoint", no_model)  # nor was a checkpoint looked for
    before = _snapshot(tmp_path, inputs, tiny)
    code, err, cpu_s = _invoke(argv, capsys)
    try:
        assert code == row.code, err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        for words in row.words:
            assert words in err, err
        if row.preflight:
            # reported before any model and at once (CPU time: other jobs on the machine don't count)
            assert cpu_s < 1.0, f"{cpu_s:.2f} s of CPU"
        assert _snapshot(tmp_path, inputs, tiny) == before, "a file was created, changed or removed"
    finally:
        (tmp_path / "locked").chmod(0o755)  # so pytest can clean up


# -- training: scripts/train.py's values, each refused before any weight loads, nothing written --
TRAIN_BASE = ["model=ruyi_tiny", "model.path={tiny}", "output_dir={tmp}/run", "trainer.accelerator=cpu", "trainer.logger=none",
              "trainer.progress_refresh_rate=0", "num_workers=0", "data.frames=8", "data.height=64", "data.width=64"]  # fmt: skip
NO_GPU = "" if not torch.cuda.is_available() else "a CUDA GPU is visible"
TRAIN_CASES = {
    "trainer.max_step=3 (typo)": case("trainer.max_step=3", words="trainer.max_step is not a config key (did you mean max_steps?)"),
    "trainer.max_steps=0": case("trainer.max_steps=0", words="trainer.max_steps=0 must be an integer in [1, 1000000000]"),
    "trainer.max_steps=-1": case("trainer.max_steps=-1", words="trainer.max_steps=-1 must be an integer"),
    "learning_rate=nan": case("learning_rate=nan", words="learning_rate=nan must be a finite number > 0"),
    "learning_rate=inf": case("learning_rate=inf", words="learning_rate=inf must be a finite number"),
    "learning_rate=-1e-4": case("learning_rate=-1e-4", words="learning_rate=-0.0001 must be a number > 0"),
    "learning_rate=abc": case("learning_rate=abc", words="learning_rate='abc' must be a number"),
    "weight_decay=-0.1": case("weight_decay=-0.1", words="weight_decay=-0.1 must be a number in [0, 1]"),
    "warmup_steps=-5": case("warmup_steps=-5", words="warmup_steps=-5 must be an integer >= 0"),
    "batch_size=0": case("batch_size=0", words="batch_size=0 must be an integer in [1, 4096]"),
    "batch_size=1.5": case("batch_size=1.5", words="batch_size=1.5 must be an integer"),
    "batch_size above the clips": case("data.length=2", "batch_size=4", words="the dataset holds 2 clips, fewer than batch_size=4"),
    "num_workers=-1": case("num_workers=-1", words="num_workers=-1 must be an integer in [0, 256]"),
    "seed=-1": case("seed=-1", words="seed=-1 must be an integer in [0, 4294967295]"),
    "uncond_prob=1.5": case("uncond_prob=1.5", words="uncond_prob=1.5 must be a number in [0, 1]"),
    "known_frames unknown kind": case("end_frame_prob=0", "known_frames={{middle: 1}}",
                                      words="known_frames.middle is not a kind of mask (start, start_end, prefix, keyframes)"),
    "known_frames with end_frame_prob": case("known_frames={{start: 1}}", words="known_frames and end_frame_prob=0.1 both"),
    "data.turn_prob without known_frames": case("data.turn_prob=0.2", words="data.turn_prob needs known_frames"),
    "timestep_shift=0": case("timestep_shift=0", words="timestep_shift"),
    "schedule=linear": case("schedule=linear", words="schedule='linear' is not one of constant, cosine"),
    "gradient_checkpointing=maybe": case("gradient_checkpointing=maybe", words="gradient_checkpointing='maybe' must be true or false"),
    "steps_for_time=2h": case("steps_for_time=2h", words="steps_for_time='2h' must be DD:HH:MM:SS"),
    "finetune.alpha=inf": case("finetune.alpha=inf", words="finetune.alpha=inf must be a finite number"),
    "data.frames=12 (VAE)": case("data.frames=12", words="data.frames=12 is invalid: the VAE encodes 1 frame or a multiple of 8"),
    "data.frames=200": case("data.frames=200", words="data.frames=200 must be an integer in [1, 120]"),
    "data.height=60": case("data.height=60", words="data.height=60 and data.width=64 must be multiples of 16"),
    "resume missing": case("resume={tmp}/no-such.ckpt", words=("no-such.ckpt does not exist", "checkpoints/<x>.ckpt")),
    "resume a folder": case("resume={tmp}/mine", words="mine is a folder; give a checkpoint file"),
    "trainer.precision=fp8": case("trainer.precision=fp8", words="Precision 'fp8' is invalid"),
    "trainer.strategy=foo": case("trainer.strategy=foo", words="invalid strategy name"),
    "trainer.devices=0": case("trainer.devices=0", words="trainer.devices=0 must be auto, -1 (all), a count >= 1"),
    "trainer.accelerator=gpu without one": case("trainer.accelerator=gpu", words="the trainer options cannot run here", skip=NO_GPU),
    "trainer.gradient_clip_val=nan": case("trainer.gradient_clip_val=nan", words="trainer.gradient_clip_val=nan must be a finite"),
    "trainer.accumulate_grad_batches=0": case("trainer.accumulate_grad_batches=0", words="accumulate_grad_batches=0 must be"),
    "trainer.max_time=soon": case("trainer.max_time=soon", words="trainer.max_time='soon' must be DD:HH:MM:SS"),
    "output_dir is a file": case("output_dir={tmp}/notes.txt", words="output_dir=", extra_keep=()),
    "output_dir of an earlier run": case("output_dir={tmp}/earlier", words="already holds lora.safetensors from an earlier run"),
}  # fmt: skip


@pytest.fixture(scope="module")
def warm_training(tiny, tmp_path_factory):
    """One valid training pre-flight first (imports lightning), so the CPU times measure the checks."""
    pytest.importorskip("lightning")
    import ruyi.assembly
    from ruyi.training import run as training

    out = tmp_path_factory.mktemp("warm-train")
    cfg = compose_command_line([a.format(tiny=tiny, tmp=out) for a in TRAIN_BASE], config_dir=CONFIGS, config_name="train")
    real = ruyi.assembly.build
    ruyi.assembly.build = lambda *a, **k: (_ for _ in ()).throw(_Built())
    try:
        with pytest.raises(_Built):
            training.build_run(cfg)
    finally:
        ruyi.assembly.build = real


@pytest.mark.parametrize("name", list(TRAIN_CASES))
def test_bad_training_input(name, tiny, warm_training, tmp_path, capsys, monkeypatch):
    """As ``scripts/train.py ARGV`` runs it; the weights are never reached and no file appears."""
    import ruyi.assembly
    from ruyi.training import run as training

    row = TRAIN_CASES[name]
    if row.skip:
        pytest.skip(row.skip)
    _sentinels(tmp_path)
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / "lora.safetensors").write_bytes(b"an earlier run's LoRA")
    argv = [a.format(tiny=tiny, tmp=tmp_path) for a in row.argv]
    keys = {a.split("=")[0] for a in argv}
    argv = [b.format(tiny=tiny, tmp=tmp_path) for b in TRAIN_BASE if b.split("=")[0] not in keys] + argv

    def no_model(*args, **kwargs):
        raise AssertionError("weights were loaded although the value could be checked before")

    monkeypatch.setattr(ruyi.assembly, "build", no_model)
    before = _snapshot(tmp_path, tiny)
    try:
        cfg = compose_command_line(argv, config_dir=CONFIGS, config_name="train")
    except RuyiUserError as refused:
        code, err, cpu_s = 2, f"error: {refused}\n", 0.0
    else:
        began = time.process_time()
        code = training.run(cfg)
        err, cpu_s = capsys.readouterr().err, time.process_time() - began
    try:
        assert code == 2, err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        for words in row.words:
            assert words in err, err
        assert cpu_s < 1.0, f"{cpu_s:.2f} s of CPU"
        assert _snapshot(tmp_path, tiny) == before, "a file was created, changed or removed"
    finally:
        (tmp_path / "locked").chmod(0o755)


NO_CUDA = "" if not torch.cuda.is_available() else "a CUDA GPU is visible"
SCRIPTS = {  # argv, exit code, words in the error line, reason to skip here
    "infer.py sampler=foo": (["scripts/infer.py", "sampler=foo"], 2, "valid names: ddim, dpmpp, euler, euler_a, pndm", ""),
    "infer.py +frame=16": (["scripts/infer.py", "+frame=16"], 2, "did you mean frames?", ""),
    "train.py trainer.max_step=3": (["scripts/train.py", "trainer.max_step=3"], 2, "did you mean max_steps?", ""),
    "train.py finetune=foo": (["scripts/train.py", "finetune=foo"], 2, "finetune=foo is not a known finetune", ""),
    "sweep.py without CUDA": (["benchmarks/sweep.py", "bench.results={tmp}/sweep.jsonl", "bench.failures={tmp}/failed.jsonl"],
                              2, "needs a CUDA GPU", NO_CUDA),
    "sweep.py offload=foo": (["benchmarks/sweep.py", "offload=foo", "bench.results={tmp}/sweep.jsonl"], 2,
                             "offload=foo is not a known offload", ""),
    "report.py without results": (["benchmarks/report.py", "{tmp}/none.jsonl", "--out", "{tmp}/r"], 2,
                                  "none.jsonl does not exist", ""),
}  # fmt: skip


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_bad_script_input(name, tmp_path):
    """The entry scripts themselves: exit code 2, one line, nothing written (a fresh folder stays empty)."""
    argv, code, words, skip = SCRIPTS[name]
    if skip:
        pytest.skip(skip)
    argv = [a.format(tmp=tmp_path) for a in argv]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / argv[0]), *argv[1:]], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == code, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and words in lines[0], proc.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []


def test_failed_benchmark_jobs_never_become_data_rows(tmp_path):
    """A crash or timeout goes to the failures file; a measurement and an OOM (a table cell) to the results."""
    sys.path.insert(0, str(REPO))
    from benchmarks.sweep import record

    results, failures = tmp_path / "sweep.jsonl", tmp_path / "failed.jsonl"
    for status in ("ok", "oom", "failed", "timeout"):
        record({"status": status}, results=results, failures=failures)
    read = lambda path: [json.loads(line)["status"] for line in path.read_text().splitlines()]  # noqa: E731
    assert read(results) == ["ok", "oom"] and read(failures) == ["failed", "timeout"]
