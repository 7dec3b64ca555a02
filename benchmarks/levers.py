"""Every lossy lever judged on the trained tiny model: fidelity, camera, stability and time per video.

    python benchmarks/levers.py --threads 1                   # every CPU lever on the CPU
    python benchmarks/levers.py --levers teacache,sampler     # some groups (names: --list)
    python benchmarks/levers.py --device cuda --levers fp8_compute,offload_group,attention_gpu
    python benchmarks/levers.py --table-only                  # the table again from --out's results

Each lever group is one Hydra multirun of ``scripts/infer.py`` with ``eval=on`` over held-out
requests (start images x cameras x seeds, saved to ``--out``/images): every job's video is compared
with the reference video of its request, made once with the preset's defaults (``ruyi_tiny_pans``:
ddim, 10 steps, cfg 4, float32) and cached in ``--out``/references. The table (markdown, on stdout
and in ``--out``/levers.md) has one row per setting; ``benchmarks/report.py`` draws its Pareto plot.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.report import quality_table, read_rows  # noqa: E402
from ruyi.conditioning.control import PANS  # noqa: E402

CAMERAS = (PANS[1], PANS[3], PANS[0])  # left, up, static: a pan along each axis and none
SEEDS = (1, 2)
IMAGES = ("procedural", "astronaut", "chelsea")
# group -> the overrides its multirun adds (Hydra sweep syntax); "defaults" repeats the reference's
# settings, so it checks that a run is reproducible (it must score identical)
LEVERS = {
    "defaults": ["sampler=ddim", "steps=10"],
    "precision": ["precision=fp8_lite,fp8_strong,fp8_extreme"],
    "dtype": ["dtype=bfloat16"],
    "teacache": ["plugin=[teacache]", "plugin.teacache.threshold=0.05,0.1,0.15,0.25"],
    "teacache_readme": ["plugin=[teacache]", "plugin.teacache.threshold=0.15", "plugin.teacache.skip_start_steps=3"],
    "enhance_a_video": ["plugin=[enhance_a_video]", "plugin.enhance_a_video.weight=1,2,4"],
    "sampler": ["sampler=ddim,euler,euler_a,dpmpp,pndm", "steps=5,10,25"],
    "memory": ["memory=cfg_split,token_chunks,inplace,vae_stream,combo"],
    # at 64x64 x 8 frames (128 tokens) the default slices of 16384 tokens never cut: these do. (One
    # group each: a multirun composes its own config without the swept values first, where a key
    # of a swept group, memory.chunk_tokens under memory=a,b, does not exist yet.)
    "token_chunks_sliced": ["memory=token_chunks", "memory.chunk_tokens=32"],
    "inplace_sliced": ["memory=inplace", "memory.chunk_tokens=32"],
    "offload": ["offload=model,sequential"],
    "skip_steps": ["skip_steps=1,3"],
    "vae_tiles": ["vae_tile_size=32"],
    "attention": ["attention=sdpa,math,chunked"],
    # 2 x 4 heads x 128^2 scores x 4 bytes = 512 KiB: 64 KiB slices cut it into 8
    "attention_sliced": ["attention=chunked", "attention.max_score_bytes=65536"],
}
# levers that need a CUDA GPU: run with --device cuda (rows "GPU only: not measured" otherwise)
GPU_LEVERS = {
    "fp8_compute": ["precision=fp8_compute", "dtype=bfloat16", "compile=regional"],
    "offload_group": ["offload=group"],
    "attention_gpu": ["attention=efficient,flash,cudnn"],
}


def save_images(folder: Path, size: int = 256) -> dict[str, Path]:
    """The held-out start images: the default procedural picture and two photographs from
    scikit-image's bundled data (astronaut, chelsea), square-cropped and resized."""
    from PIL import Image

    from ruyi.io import procedural_image

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in IMAGES:
        path = folder / f"{name}.png"
        if not path.is_file():
            if name == "procedural":
                image = procedural_image()  # exactly what image=null draws
            else:
                import skimage.data

                array = getattr(skimage.data, name)()
                side = min(array.shape[:2])
                top, left = (array.shape[0] - side) // 2, (array.shape[1] - side) // 2
                crop = Image.fromarray(array[top : top + side, left : left + side])
                image = crop.resize((size, size), Image.Resampling.LANCZOS)
            image.save(path)
        paths[name] = path
    return paths


def command(group: str, overrides: list[str], args, images: dict[str, Path]) -> list[str]:
    out = args.out.resolve()
    return [
        sys.executable, str(REPO / "scripts" / "infer.py"), "-m", "eval=on", *overrides,
        "image=" + ",".join(str(images[name]) for name in args.images), "camera=" + ",".join(args.cameras),
        "seed=" + ",".join(str(s) for s in args.seeds), f"device={args.device}", "progress=false", "overwrite=true",
        f"output={out / 'videos' / group / 'ruyi.mp4'}", f"eval.out={out / 'eval.jsonl'}",
        f"eval.cache={out / 'references'}", "eval.metrics=[psnr,ssim,camera,keyframes,flicker]",
        f"hydra.sweep.dir={out / 'hydra' / group}",
    ]  # fmt: skip


def run_group(group: str, overrides: list[str], args, images: dict[str, Path]) -> int:
    cmd = command(group, overrides, args, images)
    print(f"[{group}] {' '.join(overrides)}", flush=True)
    began = time.perf_counter()
    env = dict(os.environ)
    if args.threads:  # on a shared machine torch's default threads spin and take many times the CPU time
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    with (args.out / "logs").joinpath(f"{group}.log").open("w") as log:
        code = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    print(f"[{group}] exit {code} after {time.perf_counter() - began:.0f} s", flush=True)
    return code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    levers = {**LEVERS, **GPU_LEVERS}
    parser.add_argument("--levers", default=",".join(LEVERS), help="comma-separated groups (default: every CPU group)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the GPU groups need cuda)")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "levers", help="videos, references, eval.jsonl")
    parser.add_argument("--images", default=",".join(IMAGES), help=f"held-out start images among {', '.join(IMAGES)}")
    parser.add_argument("--cameras", default=",".join(CAMERAS), help="camera labels the model has (infer.py --help lists them)")
    parser.add_argument("--seeds", default=",".join(str(s) for s in SEEDS))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per job (OMP_NUM_THREADS)")
    parser.add_argument("--table-only", action="store_true", help="only print the table of --out's eval.jsonl")
    parser.add_argument("--list", action="store_true", help="list the lever groups")
    args = parser.parse_args()
    if args.list:
        for name, overrides in levers.items():
            print(f"{name:<18} {' '.join(overrides)}{'   (CUDA)' if name in GPU_LEVERS else ''}")
        return 0
    groups = [g.strip() for g in args.levers.split(",") if g.strip()]
    unknown = [g for g in groups if g not in levers]
    if unknown:
        print(f"error: unknown lever group(s) {', '.join(unknown)}; valid: {', '.join(levers)}", file=sys.stderr)
        return 2
    args.images = [i.strip() for i in args.images.split(",") if i.strip()]
    if set(args.images) - set(IMAGES):
        print(f"error: --images must name some of {', '.join(IMAGES)}", file=sys.stderr)
        return 2
    args.cameras = [c.strip() for c in args.cameras.split(",") if c.strip()]
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.device == "cpu" and any(g in GPU_LEVERS for g in groups):
        print(f"error: {', '.join(g for g in groups if g in GPU_LEVERS)} need --device cuda", file=sys.stderr)
        return 2
    results = args.out / "eval.jsonl"
    if not args.table_only:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "logs").mkdir(exist_ok=True)
        images = save_images(args.out / "images")
        failed = [g for g in groups if run_group(g, levers[g], args, images)]
        if failed:
            print(f"note: group(s) {', '.join(failed)} had failed jobs; see {args.out / 'logs'}", file=sys.stderr)
    if not results.is_file():
        print(f"error: {results} does not exist; run without --table-only first", file=sys.stderr)
        return 2
    not_run = [g for g in GPU_LEVERS if args.device == "cpu"]
    table = quality_table(read_rows(results), not_run={g: " ".join(GPU_LEVERS[g]) for g in not_run})
    (args.out / "levers.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
