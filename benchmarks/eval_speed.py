"""How long each ``ruyi eval`` metric takes on the CPU, at the tiny default's size and the 7B's largest.

    python benchmarks/eval_speed.py [--sizes 64x8 768x120] [--threads 2]

Targets (issue 22): at most 1 s for 64x64 x 8 frames and 30 s for 768x768 x 120 frames on two
cores, every metric together. The videos are a smooth random canvas panned 3 px a frame and a
noisier copy of it as the reference, so every metric has work to do.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageFilter  # noqa: E402

TARGETS_S = {(64, 8): 1.0, (768, 120): 30.0}


def panned_video(side: int, frames: int, step: int = 3) -> np.ndarray:
    rng = np.random.default_rng(0)
    big = side + step * frames
    canvas = Image.fromarray((rng.random((big // 4, big // 4, 3)) * 255).astype(np.uint8))
    canvas = np.asarray(canvas.resize((big, big), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(2)))
    return np.stack([canvas[:side, big - side - i * step : big - i * step] for i in range(frames)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["64x8", "768x120"], help="SIDExFRAMES")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from ruyi.eval import build_metrics, make_sample

    print(f"| video | {' | '.join(m.registry_name for m in build_metrics())} | motion (shared) | all | target |")
    print("|---" * 10 + "|")
    for size in args.sizes:
        side, frames = (int(v) for v in size.split("x"))
        video = panned_video(side, frames)
        noisy = np.clip(video + np.random.default_rng(1).normal(0, 8, video.shape), 0, 255).astype(np.uint8)
        sample = make_sample(video, reference=noisy, image=video[0], camera="left")
        began = time.perf_counter()
        sample.pair_shifts  # noqa: B018 - measured once, shared by camera and flicker
        motion_s = time.perf_counter() - began
        cells = []
        total = motion_s
        for metric in build_metrics():
            reason = metric.skipped(sample)
            if reason:
                cells.append("skipped")
                continue
            began = time.perf_counter()
            metric(sample)
            seconds = time.perf_counter() - began
            total += seconds
            cells.append(f"{seconds:.2f} s")
        target = TARGETS_S.get((side, frames))
        verdict = "" if target is None else f"<= {target:g} s: {'met' if total <= target else 'MISSED'}"
        print(f"| {side}x{side} x {frames} | {' | '.join(cells)} | {motion_s:.2f} s | {total:.2f} s | {verdict} |")


if __name__ == "__main__":
    main()
