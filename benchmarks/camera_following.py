"""Does a model move the picture the way ``camera=`` asks (pans, and zooms where the model has them)?
Measured by kind of image, on images training never saw.

    python benchmarks/camera_following.py --out benchmarks/results/camera_heldout          # the report set
    python benchmarks/camera_following.py --set selection --model-path runs/x/checkpoint    # to choose settings
    python benchmarks/camera_following.py --kinds photographs --device cuda
    python benchmarks/camera_following.py --cameras static left right up down   # the pans alone
    python benchmarks/camera_following.py --merge a/camera_following.json b/camera_following.json --out both

The start images come from ``ruyi.eval.heldout``: drawn shapes, gradients with structure, procedural
textures of the held-out stream and real photographs, in two disjoint sets fixed before training
(``--set heldout`` reports, ``--set selection`` is for choosing; see that module and
``ruyi.training.data.photos`` for which photographs are held out). For each image, camera
move (``--cameras``: by default every move of ``ruyi.conditioning.control.MOVES`` that the model
has rows for) and seed, the pipeline generates a video (assembled from ``configs/infer.yaml`` as
``infer.py`` does). The global displacement between consecutive frames is measured by
half-whitened phase correlation (grey frames, lightly blurred, Hann window, cross-power spectrum
over the square root of its magnitude, sub-pixel peak; ``ruyi.eval.motion``, the camera metric of
``ruyi eval``; the JSON also keeps classic phase correlation, which the codec's static 8 px block
grid fools on small generated frames). A pan is right when the dominant axis and its sign match
the film convention (camera=left -> content moves right, camera=up -> content moves down); a zoom
when the measured scale change (``ruyi.eval.motion.pair_zoom``) has the sign asked and moves the
frame's edges further than the global shift does.

Each image is the centre of a larger canvas, so its true pans and zooms exist: the ``reference``
rows run the same measurement on them after the VAE round trip. An image is *measurable* for the
pans when the measurement reads all four of its true pans right, for the zooms when it reads both
true zooms right; on the others (a gradient panned along its constant axis, say) nobody could tell
from the video which way it moved, so the goal is judged on the measurable images, and the tables
give the score on all images beside it.

The goal, per kind: >= 90 % right in every moving direction (measurable images), and the static
videos' median motion at most a quarter of the moving videos' median (``STATIC_SHARE``).

Below the tables: the held-out training loss at t = 990 for every (true camera, label given) pair
(same clips, same noise), which shows whether the model reads the label at all before its videos
pan cleanly. Prints markdown and writes it with the raw numbers (JSON), a frame strip per
camera (PNG) and GIFs of the first image's camera=left and zoom_in to ``--out``.
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
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from ruyi.conditioning.control import MOVES, PANS, ZOOMS  # noqa: E402
from ruyi.eval.heldout import IMAGE_SETS, KINDS, image_set, start_image, true_pans, true_zooms  # noqa: E402
from ruyi.eval.motion import CONTENT, WHITENING, content_motion, content_zoom, phase_shift, zoom_spread  # noqa: E402,F401
from ruyi.eval.motion import follows as is_right  # noqa: E402
from ruyi.files import write_text_atomic  # noqa: E402
from ruyi.training.data.procedural import zoom_extent  # noqa: E402

DIRECTIONS = PANS  # the moves judged where a model has no other rows
MOVING = PANS[1:]
GOAL_RIGHT = 90.0  # % right in every moving direction, on measurable images
STATIC_SHARE = 0.25  # static median px/frame at most this share of the moving median
REFERENCE = "reference (true pans through the VAE)"


def right(direction: str, row: dict, key: str = "motion") -> bool:
    """Whether a row's measured motion goes the way ``direction`` asks."""
    return bool(is_right(direction, row[key], row.get("spread", 0.0), row.get("zoom", 0.0)))


def family(direction: str) -> tuple[str, ...]:
    """The true moves an image must read right to judge ``direction`` on it: its zooms or its pans."""
    return ZOOMS if MOVES[direction].zoom else MOVING


def moving_cameras(rows: list[dict]) -> list[str]:
    """The moving cameras the rows hold, in ``MOVES`` order."""
    present = {r["camera"] for r in rows}
    return [d for d in MOVES if d != "static" and d in present]


def _share(rows: list[dict], direction: str, key: str = "motion") -> float | None:
    return None if direction == "static" or not rows else 100.0 * float(np.mean([right(direction, r, key) for r in rows]))


def summarise(rows: list[dict], frames: int) -> list[dict]:
    """One line per (source, kind, camera), kinds in the rows' order and then ``all``: the share
    judged right over all images, over the measurable images (``measurable_images``) and by
    classic phase correlation, and the median motion (px/frame and its dx, dy)."""
    measurable = {move: measurable_images(rows, family(move)) for move in MOVES}
    table = []
    for source in dict.fromkeys(r["source"] for r in rows):
        present = dict.fromkeys(r["kind"] for r in rows if r["source"] == source)  # merged shards interleave kinds
        kinds = sorted(present, key=lambda k: KINDS.index(k) if k in KINDS else len(KINDS))
        for kind in [*kinds, "all"]:
            for direction in MOVES:
                mine = [r for r in rows if r["source"] == source and r["camera"] == direction and kind in ("all", r["kind"])]
                if not mine:
                    continue
                speed = [float(np.hypot(*r["motion"])) / (frames - 1) for r in mine]
                judged = [r for r in mine if r["image"] in measurable[direction]]
                table.append({
                    "source": source, "kind": kind, "camera": direction, "n": len(mine),
                    "images": len({r["image"] for r in mine}), "measurable_images": len({r["image"] for r in judged}),
                    "right_%": _share(mine, direction), "right_phase_%": _share(mine, direction, "phase"),
                    "n_measurable": len(judged), "right_measurable_%": _share(judged, direction),
                    "median_px_per_frame": float(np.median(speed)),
                    "median_dx": float(np.median([r["motion"][0] for r in mine])),
                    "median_dy": float(np.median([r["motion"][1] for r in mine])),
                    "median_zoom": float(np.median([r.get("zoom", 0.0) for r in mine])),
                })  # fmt: skip
    return table


def moving_median(rows: list[dict], kind: str, frames: int, source: str = "model") -> float | None:
    """Median px/frame over all panning videos of ``kind`` (``all``: every kind)."""
    speed = [float(np.hypot(*r["motion"])) / (frames - 1) for r in rows
             if r["source"] == source and r["camera"] in MOVING and kind in ("all", r["kind"])]  # fmt: skip
    return float(np.median(speed)) if speed else None


def by_kind(table: list[dict], rows: list[dict], frames: int, source: str = "model") -> list[dict]:
    """One line per kind (then ``all``) of ``source``: right % per moving direction on measurable
    and on all images, the static and moving median px/frame, and whether the goal is met."""
    out, moves = [], moving_cameras([r for r in rows if r["source"] == source])
    for kind in dict.fromkeys(t["kind"] for t in table if t["source"] == source):
        lines = {t["camera"]: t for t in table if t["source"] == source and t["kind"] == kind}
        any_line = next(iter(lines.values()))
        static = lines["static"]["median_px_per_frame"] if "static" in lines else None
        moving = moving_median(rows, kind, frames, source)
        measurable = {d: lines[d]["right_measurable_%"] for d in moves if d in lines}
        met = (len(measurable) == len(moves) and all(v is not None and v >= GOAL_RIGHT for v in measurable.values())
               and static is not None and moving is not None and static <= STATIC_SHARE * moving)  # fmt: skip
        out.append({
            "kind": kind, "images": any_line["images"], "measurable_images": any_line["measurable_images"],
            "right_measurable_%": measurable, "n_measurable": {d: lines[d]["n_measurable"] for d in measurable},
            "right_%": {d: lines[d]["right_%"] for d in moves if d in lines},
            "n": {d: lines[d]["n"] for d in moves if d in lines},
            "static_px_per_frame": static, "moving_px_per_frame": moving, "goal_met": met,
        })  # fmt: skip
    return out


def markdown(kinds: list[dict]) -> str:
    """The by-kind table: right % on measurable images (videos) and on all images, per direction."""

    def share(value: float | None) -> str:
        return "—" if value is None else f"{value:.0f} %"

    def speed(value: float | None) -> str:
        return "—" if value is None else f"{value:.2f}"

    moves = [d for d in MOVES if any(d in k["n"] for k in kinds)] or list(MOVING)
    lines = ["| kind | images (measurable) | " + " | ".join(moves) + " | static px/frame | moving px/frame | goal |",
             "|---" * (5 + len(moves)) + "|"]  # fmt: skip
    for k in kinds:
        cells = [f"{share(k['right_measurable_%'].get(d))} ({k['n_measurable'].get(d, 0)}) · all {share(k['right_%'].get(d))}"
                 for d in moves]  # fmt: skip
        goal = "met" if k["goal_met"] else "not met"
        lines.append(f"| {k['kind']} | {k['images']} ({k['measurable_images']}) | " + " | ".join(cells)
                     + f" | {speed(k['static_px_per_frame'])} | {speed(k['moving_px_per_frame'])} | {goal} |")  # fmt: skip
    return "\n".join(lines)


def reference_markdown(table: list[dict]) -> str:
    """How often the measure reads the true moves right, per kind and direction (all images)."""
    moves = [d for d in MOVES if d != "static" and any(t["camera"] == d and t["source"] == REFERENCE for t in table)]
    lines = ["| true moves: kind | " + " | ".join(moves) + " |", "|---" * (1 + len(moves)) + "|"]
    for kind in dict.fromkeys(t["kind"] for t in table if t["source"] == REFERENCE):
        cells = {t["camera"]: t for t in table if t["source"] == REFERENCE and t["kind"] == kind}
        shares = [f"{cells[d]['right_%']:.0f} % ({cells[d]['n']})" if d in cells else "—" for d in moves]
        lines.append(f"| {kind} | " + " | ".join(shares) + " |")
    return "\n".join(lines)


# -- does the model read the label at all? ------------------------------------------------------


@torch.no_grad()
def label_loss(pipe, model_path: Path, *, frames: int, height: int, width: int, speeds: tuple[int, ...],
               clips: int = 40, timestep: int = 990, cameras: tuple[str, ...] = PANS,
               zooms: tuple[float, ...] = (0.03, 0.06, 0.09, 0.12)) -> dict[str, dict[str, float]]:  # fmt: skip
    """Held-out training loss (v-prediction MSE, the training's own input builder) at ``timestep``
    for every (true camera, camera label given) pair, same clips and noise: {true: {given: loss}}.

    A model that reads the label has its smallest loss on the diagonal long before its videos pan
    cleanly. Only the noisy end shows it (at t <= 600 the noisy clip itself says which way the
    content moves); a model that learnt "moving or not" but no direction has one low static row
    and column and flat moving rows.
    """
    from ruyi.training.data import ProceduralPans, collate_clips
    from ruyi.training.inputs import BatchEncoder, ConditionedClips
    from ruyi.training.objective import DiffusionObjective
    from ruyi.checkpoints import scheduler_config

    data = ProceduralPans(frames=frames, height=height, width=width, split="heldout", seed=5, auto_prob=0.0,
                          cameras=cameras, pixels_per_frame=speeds, zoom_per_frame=zooms, bank_size=8, length=clips)  # fmt: skip
    items = ConditionedClips(data, pipe.image_conditioning)
    encoder, objective = BatchEncoder(pipe, uncond_prob=0.0), DiffusionObjective(scheduler_config(model_path))
    generator = torch.Generator().manual_seed(0)
    sums = {true: {given: 0.0 for given in cameras} for true in cameras}
    counts = dict.fromkeys(cameras, 0)
    device, dtype = pipe.execution_device, pipe.dtype
    for start in range(0, clips, 8):
        batch = collate_clips([items[i] for i in range(start, min(clips, start + 8))])
        encoded = encoder.encode(batch)
        x0 = encoded.x0.float().cpu()
        t = torch.full((x0.shape[0],), timestep, dtype=torch.long)
        noisy, target = objective.noisy_and_target(x0, torch.randn(x0.shape, generator=generator), t)
        for given in cameras:
            kwargs = encoder.transformer_kwargs(encoded, {**batch, "camera": [given] * len(batch["camera"])}, t,
                                                objective.num_train_timesteps)  # fmt: skip
            out = pipe.transformer(noisy.to(device, dtype), t.to(device, dtype), **kwargs).float().cpu()
            per_clip = objective.loss(out, target, per_sample=True)
            for true, loss in zip(batch["camera"], per_clip.tolist()):
                sums[true][given] += loss
        for true in batch["camera"]:
            counts[true] += 1
    return {true: {given: v / counts[true] for given, v in row.items()} for true, row in sums.items() if counts[true]}


def label_table(losses: dict[str, dict[str, float]], timestep: int = 990) -> str:
    """Markdown: one row per true camera, one column per label given; the row's smallest in bold."""
    given = list(next(iter(losses.values()))) if losses else list(DIRECTIONS)
    lines = [f"held-out training loss at t={timestep}, true camera (rows) x camera label given (columns):", "",
             "| true \\ given | " + " | ".join(given) + " |", "|---" * (1 + len(given)) + "|"]  # fmt: skip
    for true, row in losses.items():
        best = min(row.values())
        cells = [f"**{v:.4f}**" if v == best else f"{v:.4f}" for v in row.values()]
        lines.append(f"| {true} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- generation ---------------------------------------------------------------------------------
def build(model_path: Path, device: str, overrides: list[str]):
    """The pipeline as ``infer.py model=ruyi_tiny_pans model.path=...`` builds it (the preset brings its VAE)."""
    from hydra import compose, initialize_config_dir

    from ruyi.assembly import PipelineSpec, build

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose("infer", overrides=[
            "model=ruyi_tiny_pans", f"model.path={model_path}", f"device={device}", *overrides,
        ])  # fmt: skip
    return build(PipelineSpec.from_config(cfg)), cfg


def to_frames(video: torch.Tensor) -> np.ndarray:
    from ruyi.io import to_frames as frames

    return frames(video)


def measurable_images(rows: list[dict], moves: tuple[str, ...] = MOVING) -> set[str]:
    """Images all of whose true ``moves`` (the ``reference`` rows: four pans, or two zooms) the
    measurement reads right."""
    reference = [r for r in rows if r["source"].startswith("reference") and r["camera"] in moves]
    images = {r["image"] for r in reference}
    return {i for i in images if all(right(r["camera"], r) for r in reference if r["image"] == i)}


def measured(frames: np.ndarray) -> dict:
    """A video's measured motion: total (dx, dy) half-whitened and classic, log-scale zoom, its spread (px)."""
    zoom = content_zoom(frames)
    return {"motion": content_motion(frames), "phase": content_motion(frames, whitening=1.0), "zoom": zoom,
            "spread": zoom_spread(zoom, *frames.shape[1:3])}  # fmt: skip


def save_strip(videos: dict[str, np.ndarray], path: Path, picks: int = 4) -> None:
    rows = []
    for frames in videos.values():
        idx = np.linspace(0, len(frames) - 1, picks).round().astype(int)
        rows.append(np.concatenate([frames[i] for i in idx], axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def measure_reference(pipe, image, *, frames: int, height: int, width: int, speed: int, rate: float | None = None) -> list[dict]:
    """The measurement on this image's true pans (and zooms at ``rate``) after the VAE round trip:
    can it read them?"""
    rows = []
    clips = true_pans(image.canvas, frames=frames, height=height, width=width, speed=speed)
    if rate is not None:
        clips.update(true_zooms(image.canvas, frames=frames, height=height, width=width, rate=rate))
    for direction, clip in clips.items():
        pixels = torch.from_numpy(clip).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
        with torch.no_grad():
            video = pipe.vae.decode(pipe.vae.encode(pixels.to(pipe.execution_device, pipe.dtype))[0])
        decoded = to_frames((video.float().cpu().clamp(-1, 1) + 1) / 2)
        rows.append({"source": REFERENCE, "kind": image.kind, "camera": direction, "image": image.name, **measured(decoded)})
    return rows


def generate(pipe, images, args, *, height: int, width: int, speed: int, rate: float) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Reference rows and one model row per (image, camera, seed); the first image's seed-0
    videos for the strip."""
    rows, strips = [], {}
    zooms = rate if any(MOVES[c].zoom for c in args.cameras) else None
    for image in images:
        rows += measure_reference(pipe, image, frames=args.frames, height=height, width=width, speed=speed, rate=zooms)
        start = start_image(image.canvas, height, width)
        for direction in args.cameras:
            for seed in range(args.seeds):
                video = pipe(start, frames=args.frames, video_size=[height, width], steps=args.steps, cfg=args.cfg,
                             seed=seed, camera=direction, motion=args.motion, progress=False)  # fmt: skip
                frames = to_frames(video)
                rows.append({"source": "model", "kind": image.kind, "camera": direction, "image": image.name, "seed": seed,
                             **measured(frames)})  # fmt: skip
                if image is images[0] and seed == 0:
                    strips[direction] = frames
    return rows, strips


def report(rows: list[dict], *, frames: int, head: str, losses: dict | None) -> tuple[str, dict]:
    """The markdown (head, by-kind table, true pans, label loss) and the JSON payload of ``rows``."""
    table = summarise(rows, frames)
    kinds = by_kind(table, rows, frames)
    text = (f"{head}\n\ndirection right on measurable images (videos) · on all images; goal: >= {GOAL_RIGHT:.0f} % "
            f"in every direction and static <= {STATIC_SHARE} x moving\n\n" + markdown(kinds) + "\n\n"
            + reference_markdown(table))  # fmt: skip
    if losses:
        text += "\n\n" + label_table(losses)
    return text, {"by_kind": kinds, "table": table, "label_loss": losses, "rows": rows}


def merge(paths: list[Path], out: Path | None) -> None:
    """One report from the JSONs of several runs of this script (e.g. one per kind, run side by
    side on one GPU): their rows pooled, the first label-loss matrix found."""
    parts = [json.loads(p.read_text()) for p in paths]
    rows = [r for part in parts for r in part["rows"]]
    frames = int(parts[0]["args"]["frames"])
    seconds = max(part["seconds"] for part in parts)
    losses = next((part["label_loss"] for part in parts if part["label_loss"]), None)
    heads = [part["head"] for part in parts]
    images = len({(r["kind"], r["image"]) for r in rows if r["source"] == "model"})
    head = (f"{len(parts)} runs side by side, {images} images ({len(measurable_images(rows))} measurable), "
            f"{sum(r['source'] == 'model' for r in rows)} videos, the slowest run {seconds:.0f} s; runs:\n\n"
            + "\n".join(f"- {h}" for h in heads))  # fmt: skip
    text, payload = report(rows, frames=frames, head=head, losses=losses)
    print(text)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "camera_following.md", text + "\n")
        merged = {"args": parts[0]["args"], "head": head, "seconds": seconds,  # so it can be merged again
                  "runs": [p["args"] for p in parts], **payload}  # fmt: skip
        write_text_atomic(out / "camera_following.json", json.dumps(merged, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", type=Path, default=REPO / "ruyi" / "assets" / "ruyi-tiny-pans")
    parser.add_argument("--set", default="heldout", choices=sorted(IMAGE_SETS),
                        help="heldout: the report set; selection: a disjoint set for choosing settings")  # fmt: skip
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--per-kind", type=int, default=8, help="drawn, gradient and texture images each")
    parser.add_argument("--views", type=int, default=2, choices=(1, 2), help="per photograph: whole (1), and a detail (2)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cfg", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--motion", default="2")
    parser.add_argument("--size", type=int, nargs=2, default=(64, 64), metavar=("H", "W"),
                        help="video size (the training's data.height, data.width)")  # fmt: skip
    parser.add_argument("--pixels-per-frame", type=int, nargs=4, default=(2, 4, 6, 8), metavar="PX",
                        help="speeds of motion 1-4 in the training data (data.pixels_per_frame), "
                        "for the reference rows")  # fmt: skip
    parser.add_argument("--zoom-per-frame", type=float, nargs=4, default=(0.03, 0.06, 0.09, 0.12), metavar="Z",
                        help="log-scale steps of motion 1-4 in the training data (data.zoom_per_frame)")  # fmt: skip
    parser.add_argument("--cameras", nargs="+", default=None, choices=list(MOVES),
                        help="the moves judged (default: every move the model has rows for)")  # fmt: skip
    parser.add_argument("--shard", type=int, nargs=2, default=(0, 1), metavar=("I", "N"),
                        help="only images I, I+N, I+2N, ... of the set (run N side by side, then --merge)")  # fmt: skip
    parser.add_argument("--no-label-loss", action="store_true", help="skip the label-loss matrix")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                        help="no videos: one report from these runs' camera_following.json (into --out)")  # fmt: skip
    args = parser.parse_args()
    if args.merge:
        return merge(args.merge, args.out)

    height, width = args.size
    pipe, _ = build(args.model_path.resolve(), args.device, [])
    if args.cameras is None:  # the moves the loaded model has rows for
        args.cameras = [c for c in MOVES if c in pipe.control.cameras]
    speeds, rates = tuple(args.pixels_per_frame), tuple(args.zoom_per_frame)
    level = int(args.motion) - 1 if args.motion != "auto" else 1
    speed, rate = speeds[level], rates[level]
    # the canvas around each start image holds the longest pan and the widest zoom out
    travel = max((args.frames - 1) * speed, -(-(zoom_extent(height, width, args.frames, rate)[0] - height) // 2))
    images = image_set(args.set, height=height, width=width, travel=travel,
                       per_kind=args.per_kind, kinds=args.kinds, views=args.views)[args.shard[0] :: args.shard[1]]  # fmt: skip
    began = time.perf_counter()
    rows, strips = generate(pipe, images, args, height=height, width=width, speed=speed, rate=rate)
    seconds = time.perf_counter() - began
    videos = sum(r["source"] == "model" for r in rows)
    shard = "" if args.shard[1] == 1 else f" (shard {args.shard[0]} of {args.shard[1]})"
    head = (f"camera following of {args.model_path.name} on the {args.set} set{shard} ({', '.join(args.kinds)}): "
            f"{len(images)} images ({len(measurable_images(rows))} measurable: all 4 true pans read right"
            + (f"; {len(measurable_images(rows, ZOOMS))} for the zooms" if set(ZOOMS) & set(args.cameras) else "")
            + f") x {args.seeds} seeds, {', '.join(args.cameras)}, "
            f"{args.frames} frames {height}x{width}, motion {args.motion} ({speed} px/frame, zoom {rate} in training), "
            f"cfg {args.cfg}, {args.steps} steps; {videos} videos in {seconds:.0f} s on {pipe.execution_device}")  # fmt: skip
    losses = None
    if not args.no_label_loss:
        losses = label_loss(pipe, args.model_path.resolve(), frames=args.frames, height=height, width=width, speeds=speeds,
                            cameras=tuple(args.cameras), zooms=rates)  # fmt: skip
    text, payload = report(rows, frames=args.frames, head=head, losses=losses)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.out / "camera_following.md", text + "\n")
        run = {"args": {k: str(v) for k, v in vars(args).items()}, "head": head, "seconds": seconds, **payload}
        write_text_atomic(args.out / "camera_following.json", json.dumps(run, indent=1))
        save_strip(strips, args.out / "strip.png")
        for camera in ("left", "zoom_in"):
            gif = [Image.fromarray(f) for f in strips.get(camera, [])]
            if gif:
                gif[0].save(args.out / f"camera_{camera}.gif", save_all=True, append_images=gif[1:], duration=1000 // 24, loop=0)


if __name__ == "__main__":
    main()
