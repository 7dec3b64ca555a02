"""``python -m ruyi eval VIDEO [--reference REF] [--image START] [--camera DIR] [--json OUT]``.

Judges any video (an mp4 or a folder of frames, ours or not): prints a table and, with ``--json``,
writes one JSON object holding every key of :data:`ruyi.eval.RESULT_KEYS` (null where not asked).
A bad input is one line and exit code 2; the JSON file is written only when everything succeeded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ruyi.errors import OutputError, exit_code_of

EPILOG = """metrics (registry "metric"; configs/metric/):
  psnr, ssim   fidelity against --reference (identical videos: psnr 100, the cap)
  lpips        perceptual distance to --reference, only if torchvision and its weights are already here
  camera       camera_direction (film convention: content moving right = left; content growing =
               zoom_in), camera_correct against --camera, motion_px_per_frame, motion_zoom (log-scale
               change a frame, > 0 growing)
  keyframes    start_frame_psnr against --image, end_frame_psnr against --end-image
  flicker      mean grey change between frames after global-motion compensation (0..255)
  keyframe_match  keyframe_psnr (mean) and keyframe_psnr_min against each --keyframe IMAGE@FRAME
  segments     with --segment-frames: the camera of every segment (segment_camera_correct against
               --camera, one per segment or one for all) and the jump at the seams, the worst seam
               over the median of the other frame pairs: seam_jump (motion), seam_change (grey change)
"""


def parser() -> argparse.ArgumentParser:
    from ruyi.conditioning.control import AUTO, MOTIONS, MOVES
    from ruyi.conditioning.keyframes import DEFAULT_OVERLAP_FRAMES, OVERLAP_FRAMES
    from ruyi.eval.metrics import DEFAULT_METRICS

    p = argparse.ArgumentParser(
        prog="python -m ruyi eval", description="Judge a video: fidelity, camera, motion, keyframes, flicker.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("video", help="an mp4 (or any video ffmpeg reads) or a folder of frame images")
    p.add_argument("--reference", help="the reference video of the same request (for psnr, ssim, lpips)")
    p.add_argument("--image", help="the start image the video was made from (start_frame_psnr)")
    p.add_argument("--end-image", help="the end image, if there was one (end_frame_psnr)")
    p.add_argument("--camera", help=f"the camera asked for: {', '.join((*MOVES, AUTO))} (camera_correct); with "
                                    "--segment-frames also one per segment, comma-separated (segment_camera_correct)")
    p.add_argument("--motion", help=f"the motion asked for: {', '.join(MOTIONS)} (recorded beside the measure)")
    p.add_argument("--keyframe", action="append", default=[], metavar="IMAGE@FRAME",
                   help="an image the video should show at FRAME (0-based); repeat for several (keyframe_match)")
    p.add_argument("--segment-frames", type=int, help="a long video's segment length (the generation's segment.frames)")
    p.add_argument("--overlap", type=int, default=2, help="latent frames a segment takes from the previous one (segment.overlap)")
    p.add_argument("--overlap-frames", default=DEFAULT_OVERLAP_FRAMES, choices=OVERLAP_FRAMES,
                   help="whose copies of overlapping frames the video kept (segment.overlap_frames): where the seams are")
    p.add_argument("--metrics", help=f"comma-separated metric names (default: {','.join(DEFAULT_METRICS)}, plus "
                                     "keyframe_match and segments when their inputs are given)")
    p.add_argument("--json", type=Path, help="write the result as one JSON object to this file (replaced atomically)")
    return p


def format_table(result: dict) -> str:
    """Two columns: key and value, every key of the result (None shown as '-')."""
    from ruyi.eval.metrics import RESULT_KEYS

    rows = []
    for key in RESULT_KEYS:
        value = result.get(key)
        shown = "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
        if isinstance(value, list):
            shown = ", ".join(str(v) for v in value)
        rows.append(f"{key:<22} {shown}")
    for name, reason in result.get("skipped", {}).items():
        rows.append(f"{'(skipped ' + name + ')':<22} {reason}")
    return "\n".join(rows)


def check_json_output(path: Path) -> Path:
    """The JSON output must be a file in a writable place (checked before any work)."""
    from ruyi.io import check_output_path

    if path.is_dir():
        raise OutputError(f"--json {path} is a folder; name a .json file")
    if path.suffix.lower() != ".json":
        raise OutputError(f"--json {path}: name a .json file")
    return check_output_path(path)


def write_json(result: dict, path: Path) -> None:
    from ruyi.files import write_text_atomic

    write_text_atomic(path, json.dumps(result, indent=1) + "\n", what="the result")


def keyframe_arg(text: str) -> tuple[str, int]:
    """``IMAGE@FRAME`` -> (image path, frame); the frame is checked against the video later."""
    from ruyi.errors import InputError

    image, at, frame = text.rpartition("@")
    if not at or not image or not frame.strip().isdigit():
        raise InputError(f"--keyframe {text!r} must be IMAGE@FRAME, e.g. --keyframe mid.png@60")
    return image, int(frame)


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)

    def work() -> int:
        from ruyi.eval import build_metrics, default_metrics, make_sample, score

        out = check_json_output(args.json) if args.json else None
        sample = make_sample(args.video, reference=args.reference, image=args.image, end_image=args.end_image,
                             camera=args.camera, motion=args.motion, keyframes=[keyframe_arg(k) for k in args.keyframe],
                             segment_frames=args.segment_frames, overlap=args.overlap,
                             overlap_frames=args.overlap_frames)  # fmt: skip
        names = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else default_metrics(sample)
        metrics = build_metrics(names)
        result = {"video": str(args.video), "camera": sample.camera, "motion": sample.motion,
                  "frames": int(sample.frames.shape[0]), **score(sample, metrics)}  # fmt: skip
        print(format_table(result))
        if out is not None:
            write_json(result, out)
            print(f"wrote {out}", file=sys.stderr)
        return 0

    return exit_code_of(work, oom_hint="out of memory")
