"""``data=folder``: your own mp4 clips, no captions needed.

Every ``*.mp4`` under ``path`` is a sample: its first ``frames`` frames at 24 fps, scaled to cover
and centre-cropped to its aspect bucket at ``base_resolution`` (the rule inference uses for a start
image), or to ``video_size`` for all clips. The first frame is the conditioning image. Camera and
motion labels come from ``labels.csv`` beside the clips if present (``file,camera,motion``; file
relative to ``path``), else ``auto``/``auto``. A camera label the model lacks (``zoom_in``) is
what ``finetune=control`` teaches it.

Clips that cannot be read or are too short are skipped and counted when the dataset is built; a
clip that fails later (changed on disk, a decoder error mid-file) is logged, counted in
``skipped``, and replaced by the next readable clip, so an epoch never crashes halfway.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ruyi.conditioning.buckets import resolve_size
from ruyi.conditioning.control import AUTO, LABEL, MOTIONS
from ruyi.errors import ConfigError, InputError
from ruyi.registry import DATASETS

log = logging.getLogger(__name__)

def probe(path: Path) -> tuple[tuple[int, int], float]:
    """((width, height), seconds) of a clip, or OSError/RuntimeError if ffmpeg cannot open it."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        meta = next(reader)
    finally:
        reader.close()
    return tuple(meta["size"]), float(meta.get("duration") or 0.0)


def read_clip(path: Path, *, frames: int, height: int, width: int, fps: int) -> np.ndarray:
    """The first ``frames`` frames at ``fps``, scaled to cover (height, width) and centre-cropped
    -> uint8 (F, H, W, 3). Raises RuntimeError when the clip has fewer frames."""
    import imageio_ffmpeg

    vf = f"fps={fps},scale={width}:{height}:force_original_aspect_ratio=increase:flags=bicubic,crop={width}:{height}"
    reader = imageio_ffmpeg.read_frames(str(path), output_params=["-vf", vf, "-frames:v", str(frames)])
    try:
        next(reader)
        out = [np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in reader]
    finally:
        reader.close()
    if len(out) < frames:
        raise RuntimeError(f"{path} has only {len(out)} frames at {fps} fps, {frames} needed")
    return np.stack(out[:frames])


def read_labels(folder: Path, name: str) -> dict[str, tuple[str, str]]:
    """``labels.csv`` -> {relative file: (camera, motion)}; bad rows are a ConfigError naming the line."""
    path = folder / name
    if not path.is_file():
        return {}
    labels = {}
    with path.open(newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            file, camera, motion = (str(row.get(k) or "").strip() for k in ("file", "camera", "motion"))
            if not file or not LABEL.match(camera) or motion not in MOTIONS:
                raise ConfigError(
                    f"{path}:{line}: need file,camera,motion with a camera label (static, left, zoom_in...: lower-case "
                    f"letters, digits, _) and motion in {'/'.join(MOTIONS)}, got {dict(row)}"
                )
            labels[file] = (camera, motion)
    return labels


@DATASETS.register("folder")
class ClipFolder(Dataset):
    """item -> {"video": uint8 (3, F, H, W), "camera": str, "motion": str, "key": str}."""

    def __init__(
        self,
        *,
        path: str,
        frames: int = 16,
        base_resolution: int = 512,
        video_size: Sequence[int] | None = None,
        fps: int = 24,
        labels: str = "labels.csv",
    ) -> None:
        folder = Path(path)
        if not folder.is_dir():
            raise InputError(f"data.path={path} is not a folder; give the folder that holds your mp4 clips")
        self.folder, self.frames, self.fps = folder, int(frames), int(fps)
        self.labels = read_labels(folder, labels)
        self.clips: list[Path] = []
        self.sizes: list[tuple[int, int]] = []
        self.skipped = 0
        for clip in sorted(folder.rglob("*.mp4")):
            try:
                (w, h), seconds = probe(clip)
            except (OSError, RuntimeError, StopIteration, KeyError) as err:
                log.warning("skipping unreadable clip %s (%s)", clip, err)
                self.skipped += 1
                continue
            if seconds and seconds * self.fps < self.frames:
                log.warning("skipping %s: %.2f s is shorter than %d frames at %d fps", clip, seconds, self.frames, self.fps)
                self.skipped += 1
                continue
            self.clips.append(clip)
            self.sizes.append(resolve_size((w, h), base_resolution, None if video_size is None else list(video_size)))
        unknown = sorted(set(self.labels) - {c.relative_to(folder).as_posix() for c in self.clips})
        if unknown:
            log.warning("labels.csv names %d files that are not readable clips here, e.g. %s", len(unknown), unknown[:3])
        if not self.clips:
            raise InputError(f"no readable mp4 clip of >= {frames} frames in {folder} ({self.skipped} skipped)")
        log.info("%d clips in %s (%d skipped)", len(self.clips), folder, self.skipped)

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def camera_labels(self) -> set[str]:
        """The camera labels of this dataset's clips (``auto`` for those labels.csv does not name)."""
        named = {c.relative_to(self.folder).as_posix() for c in self.clips}
        labels = {camera for file, (camera, _) in self.labels.items() if file in named}
        return labels | ({AUTO} if len(named - set(self.labels)) else set())

    def label(self, index: int) -> tuple[str, str]:
        return self.labels.get(self.clips[index].relative_to(self.folder).as_posix(), (AUTO, AUTO))

    def load(self, index: int) -> dict:
        clip, (height, width) = self.clips[index], self.sizes[index]
        video = read_clip(clip, frames=self.frames, height=height, width=width, fps=self.fps)
        camera, motion = self.label(index)
        key = f"{clip.relative_to(self.folder).as_posix()}@{self.frames}x{height}x{width}@{self.fps}"
        return {"video": torch.from_numpy(video).permute(3, 0, 1, 2), "camera": camera, "motion": motion, "key": key}

    def __getitem__(self, index: int) -> dict:
        for attempt in range(len(self.clips)):
            i = (index + attempt) % len(self.clips)
            try:
                return self.load(i)
            except (OSError, RuntimeError, ValueError) as err:
                self.skipped += 1
                log.warning("skipping clip %s while training (%s); %d skipped so far", self.clips[i], err, self.skipped)
        raise InputError(f"no clip in {self.folder} could be read")
