"""The few-step student's time against its guided teacher, split into time per step and fixed cost (issue 26).

    python benchmarks/distill_floor.py                       # the shipped tiny pair, one CPU thread
    python benchmarks/distill_floor.py --device cuda --threads 0

Time per step comes from two step counts of each model (student 4 and 8 steps at cfg 1, teacher 10
and 20 steps at ``--teacher-cfg``: both guidance branches in one batch of two), so the fixed cost of a
video (encode, CLIP, decode) drops out; the best of ``--repeats`` rounds of ``--videos`` videos each.
Prints the table and the floor of the ratio: student steps x batch-1 step over teacher steps x
guided step, what no cut of the fixed costs can go below.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.distill_eval import ASSETS, _sync, build  # noqa: E402
from ruyi.eval.heldout import image_set, start_image  # noqa: E402


def video_seconds(pipe, image, *, steps: int, cfg: float, videos: int, repeats: int) -> float:
    def call():
        pipe(image, frames=8, video_size=[64, 64], steps=steps, cfg=cfg, seed=0, camera="left", motion="2", progress=False)

    call()  # first-call allocations
    best = float("inf")
    for _ in range(repeats):
        _sync(pipe.execution_device)
        began = time.perf_counter()
        for _ in range(videos):
            call()
        _sync(pipe.execution_device)
        best = min(best, (time.perf_counter() - began) / videos)
    return best


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", type=Path, default=ASSETS / "ruyi-tiny-pans")
    p.add_argument("--student", type=Path, default=ASSETS / "ruyi-tiny-pans-turbo")
    p.add_argument("--teacher-cfg", type=float, default=4.0)
    p.add_argument("--videos", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    image = start_image(image_set("heldout", height=64, width=64, travel=56, per_kind=1)[1].canvas, 64, 64)
    student = build("ruyi_tiny_pans_turbo", args.student.resolve(), args.device)
    teacher = build("ruyi_tiny_pans", args.teacher.resolve(), args.device)
    kw = dict(videos=args.videos, repeats=args.repeats)
    s4, s8 = (video_seconds(student, image, steps=n, cfg=1.0, **kw) for n in (4, 8))
    t10, t20 = (video_seconds(teacher, image, steps=n, cfg=args.teacher_cfg, **kw) for n in (10, 20))
    one, two = (s8 - s4) / 4, (t20 - t10) / 10
    floor = 4 * one / (10 * two)
    print(f"student vs teacher on {args.device} ({torch.get_num_threads()} threads), 64x64x8\n")
    print("| | per step | fixed | video |\n|---|---|---|---|")
    print(f"| student, batch 1 (cfg 1), 4 steps | {1000 * one:.2f} ms | {1000 * (s4 - 4 * one):.1f} ms | {1000 * s4:.1f} ms |")
    print(f"| teacher, batch 2 (cfg {args.teacher_cfg:g}), 10 steps | {1000 * two:.2f} ms ({two / one:.2f} x) | "
          f"{1000 * (t10 - 10 * two):.1f} ms | {1000 * t10:.1f} ms |")  # fmt: skip
    print(f"| ratio | | | {s4 / t10:.3f}; floor 4 x batch-1 step / (10 x guided step) = {floor:.3f} |")
    return {"ratio": s4 / t10, "floor": floor, "step_batch1_s": one, "step_guided_s": two}


if __name__ == "__main__":
    main()
