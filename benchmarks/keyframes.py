"""Keyframes anywhere, long videos by continuation and video-to-video, measured on held-out images (issue 25).

    python benchmarks/keyframes.py                                              # the shipped tiny default
    python benchmarks/keyframes.py --model-path runs/tiny_keyframes/checkpoint --out benchmarks/results/keyframes
    python benchmarks/keyframes.py --set selection --per-kind 2                 # to choose settings

Start images come from ``ruyi.eval.heldout`` (``--set heldout``: the report set, never trained on
nor used to choose anything; ``--set selection`` for choosing), each the centre of a larger canvas
whose true pans exist. Every number comes from ``ruyi.eval.evaluate`` (what ``python -m ruyi eval``
prints) on the videos the pipeline makes (assembled as ``infer.py model=ruyi_tiny_pans`` does):

1. **Continuation**: a 4-segment video (``--segments`` x the preset's ``segment.frames`` minus the
   overlaps, 40 frames of 16-frame segments overlapping by 2 latent frames) per image and camera
   sequence (one camera throughout, and one that turns each segment). ``segment_camera_correct``:
   the share of segments whose own frames move as their camera asks; ``seam_jump``: the largest
   content motion at a seam over the median of the other frame pairs. Goals: >= 90 % of the
   segments right, and seam_jump <= 2 on >= 90 % of the videos.
2. **Middle keyframe**: the image's true pan (``--camera`` at motion 2's training speed) at the
   middle frame as a keyframe beside the start image, against the same request without it (same
   seed): the PSNR of that frame against the keyframe image. Goal: a mean gain >= 3 dB.
3. **Video-to-video**: the image's true pan as the input video, redrawn at strength 0.9, 0.6 and
   0.3: the PSNR of the output against the input. Goal: it rises as strength falls (mean, and the
   share of videos where it does).

Prints a markdown table per goal and writes it with the raw numbers (JSON) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from benchmarks.camera_following import build  # noqa: E402  (the pipeline as infer.py builds it)
from ruyi.conditioning.keyframes import DEFAULT_OVERLAP_FRAMES, OVERLAP_FRAMES  # noqa: E402
from ruyi.eval import evaluate  # noqa: E402
from ruyi.eval.heldout import IMAGE_SETS, KINDS, image_set, start_image, true_pans  # noqa: E402
from ruyi.files import write_text_atomic  # noqa: E402
from ruyi.io import to_frames  # noqa: E402

SEQUENCES = {"one camera": None, "turning": ("left", "up", "right", "down")}  # None: --camera in every segment
STRENGTHS = (0.9, 0.6, 0.3)
GOAL_SEGMENTS, GOAL_SEAM, GOAL_SEAM_SHARE, GOAL_GAIN_DB = 0.9, 2.0, 0.9, 3.0


def long_video_frames(segments: int, segment_frames: int, overlap: int) -> int:
    """The frame count that makes exactly ``segments`` segments (each continuation adds its length less the overlap)."""
    return segment_frames + (segments - 1) * (segment_frames - 4 * overlap)


def continuation(pipe, images, args, size) -> list[dict]:
    frames = long_video_frames(args.segments, args.segment_frames, args.overlap)
    rows = []
    for image in images:
        start = start_image(image.canvas, *size)
        for name, sequence in SEQUENCES.items():
            cameras = list(sequence or (args.camera,) * args.segments)[: args.segments]
            for seed in range(args.seeds):
                video = pipe(start, frames=frames, camera=cameras, motion=args.motion, seed=seed, progress=False,
                             segment_frames=args.segment_frames, overlap=args.overlap,
                             overlap_frames=args.overlap_frames)  # fmt: skip
                result = evaluate(video, camera=cameras, segment_frames=args.segment_frames, overlap=args.overlap,
                                  overlap_frames=args.overlap_frames, metrics=["segments"])  # fmt: skip
                keys = ("segment_cameras", "segment_camera_correct", "seam_jump", "seam_change")
                rows.append({"image": image.name, "kind": image.kind, "sequence": name, "seed": seed, "cameras": cameras,
                             **{k: result[k] for k in keys}, **steps_at_latent_frames(video, args)})  # fmt: skip
    return rows


def steps_at_latent_frames(video, args) -> dict:
    """Diagnostics beside the seam goal (not goals): ``step_ratio``, the median motion of the frame
    pairs that cross a latent-frame boundary (every 4th) over that of the pairs inside one, seams
    left out (1: the video moves evenly; more: it moves in steps of 4 frames); ``seam_vs_steps``,
    the worst seam's motion over the median of the other boundary-crossing pairs (every seam crosses
    one: 1 means the seam moves like the video's ordinary steps)."""
    from ruyi.conditioning.keyframes import LATENT_FRAME, plan_segments, seam_pairs
    from ruyi.eval.motion import pair_shifts, static_threshold

    frames = to_frames(video)
    motion = np.hypot(*pair_shifts(frames).T)
    plan = plan_segments(len(frames), segment_frames=args.segment_frames, overlap=args.overlap)
    seams = set(seam_pairs(plan, args.overlap_frames))
    last = LATENT_FRAME - 1  # pair i crosses a latent-frame boundary when frame i is a latent frame's last
    crossing = [i for i in range(len(motion)) if i % LATENT_FRAME == last and i not in seams]
    inside = [i for i in range(len(motion)) if i % LATENT_FRAME != last and i not in seams]
    floor = static_threshold(*frames.shape[1:3])
    return {"step_ratio": float(np.median(motion[crossing]) / max(np.median(motion[inside]), floor)),
            "seam_vs_steps": float(max(motion[i] for i in seams) / max(np.median(motion[crossing]), floor))}


def middle_keyframe(pipe, images, args, size) -> list[dict]:
    frames, middle = args.segment_frames, args.segment_frames // 2
    rows = []
    for image in images:
        start = start_image(image.canvas, *size)
        target = true_pans(image.canvas, frames=frames, height=size[0], width=size[1], speed=args.speed)[args.camera][middle]
        scores = {}
        for given in (False, True):
            keyframes = [{"image": target, "frame": middle}] if given else []
            video = pipe(start, keyframes=keyframes, frames=frames, camera=args.camera, motion=args.motion, seed=0,
                         progress=False)  # fmt: skip
            scores[given] = evaluate(video, keyframes=[(target, middle)], metrics=["keyframe_match"])["keyframe_psnr"]
        rows.append({"image": image.name, "kind": image.kind, "frame": middle, "psnr_without": scores[False],
                     "psnr_with": scores[True], "gain_db": scores[True] - scores[False]})  # fmt: skip
    return rows


def video_to_video(pipe, images, args, size) -> list[dict]:
    frames = args.segment_frames
    rows = []
    for image in images:
        clip = true_pans(image.canvas, frames=frames, height=size[0], width=size[1], speed=args.speed)[args.camera]
        psnr = {}
        for strength in STRENGTHS:
            video = pipe(video=clip, strength=strength, camera=args.camera, motion=args.motion, seed=0, progress=False)
            psnr[strength] = evaluate(to_frames(video), reference=clip, metrics=["psnr"])["psnr"]
        values = [psnr[s] for s in STRENGTHS]
        rows.append({"image": image.name, "kind": image.kind, "psnr": {str(s): psnr[s] for s in STRENGTHS},
                     "monotone": all(a < b for a, b in zip(values, values[1:]))})  # fmt: skip
    return rows


def summary(cont: list[dict], keys: list[dict], v2v: list[dict]) -> tuple[str, dict]:
    right = [r["segment_camera_correct"] for r in cont if r["segment_camera_correct"] is not None]
    seams = [r["seam_jump"] for r in cont if r["seam_jump"] is not None]
    seam_ok = float(np.mean([s <= GOAL_SEAM for s in seams])) if seams else None
    segments_ok = float(np.mean(right)) if right else None
    gain = float(np.mean([r["gain_db"] for r in keys])) if keys else None
    mean_psnr = {s: float(np.mean([r["psnr"][str(s)] for r in v2v])) for s in STRENGTHS} if v2v else {}
    ordered = [mean_psnr[s] for s in STRENGTHS] if v2v else []
    v2v_ok = bool(ordered) and all(a < b for a, b in zip(ordered, ordered[1:]))

    def met(ok: bool) -> str:
        return "met" if ok else "not met"

    lines = ["| goal | measured | target | |", "|---|---|---|---|"]
    if cont:
        by_seq = {name: float(np.mean([r["segment_camera_correct"] for r in cont if r["sequence"] == name])) for name in SEQUENCES}
        lines.append(f"| continuation: segments whose camera is right | {100 * segments_ok:.0f} % ("
                     + ", ".join(f"{k} {100 * v:.0f} %" for k, v in by_seq.items()) + f"; {len(right)} videos) "
                     f"| >= {100 * GOAL_SEGMENTS:.0f} % | {met(segments_ok >= GOAL_SEGMENTS)} |")  # fmt: skip
        lines.append(f"| continuation: videos with seam_jump <= {GOAL_SEAM:g} | {100 * seam_ok:.0f} % (median "
                     f"{np.median(seams):.2f}, worst {max(seams):.2f}; seam_change median "
                     f"{np.median([r['seam_change'] for r in cont]):.2f}) | >= {100 * GOAL_SEAM_SHARE:.0f} % "
                     f"| {met(seam_ok >= GOAL_SEAM_SHARE)} |")  # fmt: skip
        if "step_ratio" in cont[0]:
            vs_steps = [r["seam_vs_steps"] for r in cont]
            lines.append(f"| (diagnostic) pairs across a latent-frame boundary over pairs inside one; worst seam over "
                         f"the other boundary pairs | median {np.median([r['step_ratio'] for r in cont]):.2f}; median "
                         f"{np.median(vs_steps):.2f}, <= 2 on {100 * np.mean(np.array(vs_steps) <= 2):.0f} % | — | |")  # fmt: skip
    if keys:
        lines.append(f"| middle keyframe: PSNR of its frame, with - without | {gain:+.2f} dB (with "
                     f"{np.mean([r['psnr_with'] for r in keys]):.2f}, without {np.mean([r['psnr_without'] for r in keys]):.2f}; "
                     f"gain > 0 on {100 * np.mean([r['gain_db'] > 0 for r in keys]):.0f} % of {len(keys)} images) "
                     f"| >= +{GOAL_GAIN_DB:g} dB | {met(gain >= GOAL_GAIN_DB)} |")  # fmt: skip
    if v2v:
        lines.append("| video-to-video: PSNR to the input at strength " + " / ".join(f"{s:g}" for s in STRENGTHS)
                     + " | " + " / ".join(f"{mean_psnr[s]:.2f}" for s in STRENGTHS) + f" dB (monotone on "
                     f"{100 * np.mean([r['monotone'] for r in v2v]):.0f} % of {len(v2v)} inputs) "
                     f"| rising | {met(v2v_ok)} |")  # fmt: skip
    payload = {"segments_right": segments_ok, "seam_ok_share": seam_ok, "keyframe_gain_db": gain,
               "v2v_mean_psnr": {str(k): v for k, v in mean_psnr.items()}, "v2v_monotone": v2v_ok}  # fmt: skip
    return "\n".join(lines), payload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", type=Path, default=REPO / "ruyi" / "assets" / "ruyi-tiny-pans")
    parser.add_argument("--set", default="heldout", choices=sorted(IMAGE_SETS))
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--per-kind", type=int, default=3, help="drawn, gradient and texture images each")
    parser.add_argument("--views", type=int, default=1, choices=(1, 2), help="per photograph: whole (1), and a detail (2)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds of each continuation request")
    parser.add_argument("--segments", type=int, default=4)
    parser.add_argument("--segment-frames", type=int, default=16, help="the preset's segment.frames")
    parser.add_argument("--overlap", type=int, default=2)
    parser.add_argument("--overlap-frames", default=DEFAULT_OVERLAP_FRAMES, choices=OVERLAP_FRAMES,
                        help="whose copies of the overlapping frames the video keeps (segment.overlap_frames)")
    parser.add_argument("--camera", default="left", choices=("left", "right", "up", "down"))
    parser.add_argument("--motion", default="2")
    parser.add_argument("--speed", type=int, default=4, help="px/frame of --motion in the training data (true pans)")
    parser.add_argument("--size", type=int, nargs=2, default=(64, 64), metavar=("H", "W"))
    parser.add_argument("--goals", nargs="+", default=["continuation", "keyframe", "v2v"],
                        choices=("continuation", "keyframe", "v2v"))  # fmt: skip
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    size = tuple(args.size)
    pipe, _ = build(args.model_path.resolve(), args.device, [f"video_size=[{size[0]},{size[1]}]"])
    travel = (args.segment_frames - 1) * args.speed
    images = image_set(args.set, height=size[0], width=size[1], travel=travel, per_kind=args.per_kind,
                       kinds=args.kinds, views=args.views)  # fmt: skip
    began = time.perf_counter()
    cont = continuation(pipe, images, args, size) if "continuation" in args.goals else []
    keys = middle_keyframe(pipe, images, args, size) if "keyframe" in args.goals else []
    v2v = video_to_video(pipe, images, args, size) if "v2v" in args.goals else []
    seconds = time.perf_counter() - began
    table, payload = summary(cont, keys, v2v)
    model = args.model_path.name if args.model_path.name != "checkpoint" else f"{args.model_path.parent.name}/checkpoint"
    head = (f"keyframes, continuation and video-to-video of {model} on the {args.set} set: {len(images)} images "
            f"({', '.join(args.kinds)}), camera {args.camera}, motion {args.motion}, {args.segments} segments of "
            f"{args.segment_frames} frames overlapping by {args.overlap} latent frames (the {args.overlap_frames} segment's copies kept), {size[0]}x{size[1]}, the preset's "
            f"steps and cfg; {seconds:.0f} s on {pipe.execution_device}")  # fmt: skip
    text = f"{head}\n\n{table}"
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.out / "keyframes.md", text + "\n")
        run = {"args": {k: str(v) for k, v in vars(args).items()}, "head": head, "seconds": seconds, **payload,
               "continuation": cont, "keyframe": keys, "v2v": v2v}  # fmt: skip
        write_text_atomic(args.out / "keyframes.json", json.dumps(run, indent=1))


if __name__ == "__main__":
    main()
