"""A few-step student without guidance against its guided teacher, on images training never saw.

    python benchmarks/distill_eval.py --student runs/tiny_turbo/checkpoint --out benchmarks/results/distill
    python benchmarks/distill_eval.py --student ruyi/assets/ruyi-tiny-pans --per-kind 2 --views 1   # untrained (= teacher weights)

The teacher (``--teacher``, ``model=ruyi_tiny_pans``: DDIM on trailing timesteps) makes every request
with guidance (``--teacher-steps`` 10, ``--teacher-cfg`` 4); the student (``--student``,
``model=ruyi_tiny_pans_turbo``: ``sampler=turbo``, cfg 1) makes the same requests at each of
``--student-steps`` (1, 2, 4, 8). Both pipelines are assembled from ``configs/infer.yaml`` as
``infer.py`` builds them and every video is the real ``__call__``.

Requests, per held-out image (``ruyi.eval.heldout``: drawn shapes, gradients, textures of the
held-out stream, photographs): every camera (static, left, right, up, down) at ``--motion`` for
``--seeds`` seeds (camera accuracy), and every moving camera at motion 1-4 for ``--motion-seeds``
seeds (motion rank correlation). Judged with ``ruyi.eval`` (the metrics of ``ruyi eval``):

- camera accuracy per direction: the share of videos whose measured camera is the one asked for
  (``camera`` metric: film convention, static below its px/frame threshold);
- motion rank correlation: Spearman's rho of motion 1-4 against the measured px/frame;
- PSNR / SSIM of the student's video against the teacher's video of the same request (same image,
  camera, motion and seed, hence the same starting noise): how closely the student copies it;
- flicker (mean grey change between motion-compensated frames);
- wall time per video (median; one untimed call first), with the CPU seconds beside it, and its
  ratio to the teacher's.

Prints markdown and, with ``--out``, writes ``distill_eval.md``, ``distill_eval.json`` (every video's
metrics) and ``strip.png`` (camera=left on the first image: the teacher's row, then each student's).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.camera_following import save_strip  # noqa: E402  (one strip-of-frames writer)
from ruyi.eval import evaluate, motion_rank_correlation  # noqa: E402
from ruyi.eval.heldout import IMAGE_SETS, KINDS, image_set, start_image  # noqa: E402
from ruyi.files import write_text_atomic  # noqa: E402
from ruyi.conditioning.control import PANS as DIRECTIONS  # noqa: E402  (static + the four pans)

MOVING = DIRECTIONS[1:]
MOTIONS = ("1", "2", "3", "4")
METRICS = ("psnr", "ssim", "camera", "flicker")
GOAL_RIGHT, GOAL_GAP, GOAL_TIME = 90.0, 3.0, 0.25  # % per direction, points below the teacher, x its time
ASSETS = REPO / "ruyi" / "assets"


@dataclass(frozen=True)
class Request:
    image: int  # index into the image list
    camera: str
    motion: str
    seed: int


@dataclass(frozen=True)
class Setting:
    name: str
    steps: int
    cfg: float

    @property
    def forwards(self) -> int:
        """Transformer evaluations of one video (guidance doubles the batch: counted as two)."""
        return self.steps * (2 if self.cfg > 1 else 1)


def build(preset: str, path: Path, device: str):
    """The pipeline ``infer.py model=<preset> model.path=<path>`` builds."""
    from hydra import compose, initialize_config_dir

    from ruyi.assembly import PipelineSpec, build

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose("infer", overrides=[f"model={preset}", f"model.path={path}", f"device={device}"])
    return build(PipelineSpec.from_config(cfg))


def requests_for(images: int, *, seeds: int, motion: str, motion_seeds: int) -> list[Request]:
    """Camera requests (every camera at ``motion``) and motion requests (moving cameras at motion
    1-4), each once."""
    wanted = [Request(i, c, motion, s) for i in range(images) for c in DIRECTIONS for s in range(seeds)]
    wanted += [Request(i, c, m, s) for i in range(images) for c in MOVING for m in MOTIONS for s in range(motion_seeds)]
    return list(dict.fromkeys(wanted))


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def render(pipe, starts, request: Request, setting: Setting, *, frames: int, size) -> tuple[np.ndarray, float, float]:
    """One video as uint8 frames (F, H, W, 3), its wall and CPU seconds."""
    from ruyi.io import to_frames

    _sync(pipe.execution_device)
    began, cpu_began = time.perf_counter(), time.process_time()
    video = pipe(starts[request.image], frames=frames, video_size=list(size), steps=setting.steps, cfg=setting.cfg,
                 seed=request.seed, camera=request.camera, motion=request.motion, progress=False)  # fmt: skip
    _sync(pipe.execution_device)
    return to_frames(video), time.perf_counter() - began, time.process_time() - cpu_began


def run_setting(pipe, starts, images, requests, setting: Setting, *, frames, size, reference=None):
    """Every request at ``setting``: (rows of metrics, frames by request)."""
    render(pipe, starts, requests[0], setting, frames=frames, size=size)  # untimed: first-call allocations
    rows, videos = [], {}
    for request in requests:
        video, seconds, cpu_seconds = render(pipe, starts, request, setting, frames=frames, size=size)
        ref = None if reference is None else reference[request]
        metrics = evaluate(video, reference=ref, camera=request.camera, motion=request.motion, metrics=METRICS)
        rows.append({"setting": setting.name, "steps": setting.steps, "cfg": setting.cfg, "image": images[request.image].name,
                     "kind": images[request.image].kind, "camera": request.camera, "motion": request.motion,
                     "seed": request.seed, "seconds": seconds, "cpu_seconds": cpu_seconds,
                     **{k: v for k, v in metrics.items() if k != "skipped"}})  # fmt: skip
        videos[request] = video
    return rows, videos


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarise(rows: list[dict], settings: list[Setting], *, motion: str, seeds: int, motion_seeds: int) -> list[dict]:
    """One line per setting: accuracy per camera (camera requests), motion rho (motion requests),
    PSNR/SSIM against the teacher, flicker, time."""
    out = []
    for setting in settings:
        mine = [r for r in rows if r["setting"] == setting.name]
        camera_rows = [r for r in mine if r["motion"] == motion and r["seed"] < seeds]
        motion_rows = [r for r in mine if r["camera"] != "static" and r["seed"] < motion_seeds]
        accuracy = {d: _mean([float(bool(r["camera_correct"])) * 100 for r in camera_rows if r["camera"] == d]) for d in DIRECTIONS}
        out.append({
            "setting": setting.name, "steps": setting.steps, "cfg": setting.cfg, "forwards": setting.forwards,
            "videos": len(mine), "accuracy_%": accuracy,
            "static_px_per_frame": statistics.median([r["motion_px_per_frame"] for r in camera_rows if r["camera"] == "static"]),
            "motion_rho": motion_rank_correlation([r["motion"] for r in motion_rows], [r["motion_px_per_frame"] for r in motion_rows]),
            "psnr": _mean(r["psnr"] for r in mine), "ssim": _mean(r["ssim"] for r in mine),
            "flicker": _mean(r["flicker"] for r in mine),
            "seconds": statistics.median(r["seconds"] for r in mine),
            "cpu_seconds": statistics.median(r["cpu_seconds"] for r in mine),
        })  # fmt: skip
    teacher = out[0]
    for line in out:
        line["time_vs_teacher"] = line["seconds"] / teacher["seconds"]
        line["cpu_time_vs_teacher"] = line["cpu_seconds"] / teacher["cpu_seconds"]
    return out


def by_kind(rows: list[dict], settings: list[Setting], *, motion: str, seeds: int) -> dict[str, dict[str, float]]:
    """{setting: {kind: accuracy % over the moving camera requests}}."""
    table: dict[str, dict[str, float]] = {}
    for setting in settings:
        mine = [r for r in rows if r["setting"] == setting.name and r["motion"] == motion and r["seed"] < seeds and r["camera"] != "static"]
        kinds = [k for k in KINDS if any(r["kind"] == k for r in mine)]
        table[setting.name] = {k: _mean(float(bool(r["camera_correct"])) * 100 for r in mine if r["kind"] == k) for k in kinds}
    return table


def goal(summary: list[dict], steps: int = 4) -> str:
    """Whether the ``steps``-step student meets the issue's goals against the teacher (first line)."""
    teacher = summary[0]
    line = next((s for s in summary[1:] if s["steps"] == steps), None)
    if line is None:
        return f"(no {steps}-step student row)"
    gaps = {d: teacher["accuracy_%"][d] - line["accuracy_%"][d] for d in MOVING}
    lowest = min(line["accuracy_%"][d] for d in MOVING)
    accurate = lowest >= GOAL_RIGHT and max(gaps.values()) <= GOAL_GAP
    fast = line["time_vs_teacher"] <= GOAL_TIME
    return (f"{steps}-step student: lowest moving direction {lowest:.0f} % (goal >= {GOAL_RIGHT:.0f} %), largest gap to the "
            f"teacher {max(gaps.values()):+.0f} points (goal <= {GOAL_GAP:.0f}): {'met' if accurate else 'not met'}; "
            f"time {line['time_vs_teacher']:.2f}x the teacher's (goal <= {GOAL_TIME}): {'met' if fast else 'not met'}")  # fmt: skip


def markdown(summary: list[dict], kinds: dict[str, dict[str, float]]) -> str:
    def pct(v):
        return "—" if v is None else f"{v:.0f} %"

    def num(v, fmt=".2f"):
        return "—" if v is None else format(v, fmt)

    head = ("| setting | forwards | " + " | ".join(DIRECTIONS) + " | static px/frame | motion ρ | PSNR vs teacher | "
            "SSIM vs teacher | flicker | s/video | × teacher | CPU s/video | × teacher |")  # fmt: skip
    lines = [head, "|---" * (15 + len(DIRECTIONS) - 5) + "|"]
    for s in summary:
        cells = [pct(s["accuracy_%"][d]) for d in DIRECTIONS]
        lines.append(f"| {s['setting']} | {s['forwards']} | " + " | ".join(cells) + f" | {num(s['static_px_per_frame'])} | "
                     f"{num(s['motion_rho'])} | {num(s['psnr'], '.1f')} | {num(s['ssim'], '.3f')} | {num(s['flicker'])} | "
                     f"{num(s['seconds'], '.3f')} | {num(s['time_vs_teacher'])} | {num(s['cpu_seconds'], '.3f')} | "
                     f"{num(s['cpu_time_vs_teacher'])} |")  # fmt: skip
    names = list(kinds)
    present = [k for k in KINDS if any(k in kinds[n] for n in names)]
    lines += ["", "moving cameras right, by kind of image:", "", "| setting | " + " | ".join(present) + " |",
              "|---" * (1 + len(present)) + "|"]  # fmt: skip
    lines += [f"| {n} | " + " | ".join(pct(kinds[n].get(k)) for k in present) + " |" for n in names]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", type=Path, default=ASSETS / "ruyi-tiny-pans")
    p.add_argument("--student", type=Path, default=ASSETS / "ruyi-tiny-pans-turbo")
    p.add_argument("--teacher-preset", default="ruyi_tiny_pans")
    p.add_argument("--student-preset", default="ruyi_tiny_pans_turbo")
    p.add_argument("--teacher-steps", type=int, default=10)
    p.add_argument("--teacher-cfg", type=float, default=4.0)
    p.add_argument("--student-steps", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--set", default="heldout", choices=sorted(IMAGE_SETS), help="heldout: the report set; selection: for choosing")
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--per-kind", type=int, default=8, help="drawn, gradient and texture images each")
    p.add_argument("--views", type=int, default=2, choices=(1, 2), help="per photograph: whole (1), and a detail (2)")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the camera requests")
    p.add_argument("--motion", default="2", choices=MOTIONS, help="motion of the camera requests")
    p.add_argument("--motion-seeds", type=int, default=1, help="seeds of the motion 1-4 requests")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, nargs=2, default=(64, 64), metavar=("H", "W"))
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    height, width = args.size
    images = image_set(args.set, height=height, width=width, travel=(args.frames - 1) * 8, per_kind=args.per_kind,
                       kinds=args.kinds, views=args.views)  # fmt: skip
    starts = [start_image(image.canvas, height, width) for image in images]
    wanted = requests_for(len(images), seeds=args.seeds, motion=args.motion, motion_seeds=args.motion_seeds)
    settings = [Setting(f"teacher {args.teacher_steps} steps cfg {args.teacher_cfg:g}", args.teacher_steps, args.teacher_cfg)]
    settings += [Setting(f"student {n} steps cfg 1", n, 1.0) for n in args.student_steps]
    began = time.perf_counter()
    teacher = build(args.teacher_preset, args.teacher.resolve(), args.device)
    rows, reference = run_setting(teacher, starts, images, wanted, settings[0], frames=args.frames, size=args.size)
    device = str(teacher.execution_device)
    del teacher
    student = build(args.student_preset, args.student.resolve(), args.device)
    strip = {settings[0].name: reference[Request(0, "left", args.motion, 0)]}
    for setting in settings[1:]:
        more, videos = run_setting(student, starts, images, wanted, setting, frames=args.frames, size=args.size,
                                   reference=reference)  # fmt: skip
        rows += more
        strip[setting.name] = videos[Request(0, "left", args.motion, 0)]
    seconds = time.perf_counter() - began
    summary = summarise(rows, settings, motion=args.motion, seeds=args.seeds, motion_seeds=args.motion_seeds)
    kinds = by_kind(rows, settings, motion=args.motion, seeds=args.seeds)
    hardware = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    head = (f"{args.student.name} (student, sampler=turbo, cfg 1) against {args.teacher.name} (teacher, "
            f"{args.teacher_steps} steps, cfg {args.teacher_cfg:g}) on the {args.set} set: {len(images)} images "
            f"({', '.join(args.kinds)}), {len(wanted) // len(images)} requests each (5 cameras x {args.seeds} seeds at "
            f"motion {args.motion}; 4 moving cameras x motion 1-4 x {args.motion_seeds} seeds; a request in both made once), {args.frames} frames {height}x{width}; "
            f"{len(rows)} videos in {seconds:.0f} s on {hardware}")  # fmt: skip
    text = f"{head}\n\n{markdown(summary, kinds)}\n\n{goal(summary)}"
    print(text)
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "head": head, "hardware": hardware, "seconds": seconds,
              "summary": summary, "by_kind": kinds, "rows": rows}  # fmt: skip
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.out / "distill_eval.md", text + "\n")
        write_text_atomic(args.out / "distill_eval.json", json.dumps(result, separators=(",", ":")))
        save_strip(strip, args.out / "strip.png")
    return result


if __name__ == "__main__":
    main()
