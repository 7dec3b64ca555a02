"""A checkpoint folder with random weights at a model preset's real shape, in the real layout, for
measurements that must go through the loader (the host RAM of loading counts).

    python benchmarks/random_checkpoint.py DIR [--preset ruyi_mini_7b] [--device cuda]

Writes what the loader reads from the released Ruyi-Mini-7B folder: ``transformer/``, ``vae/``,
``image_encoder/`` (with its ``preprocessor_config.json``), ``scheduler/``,
``embeddings.safetensors`` and ``model_index.json`` (``/work/shared/fixtures/ruyi-tiny/README.md``
has the layout). The transformer is written one tensor at a time (never the whole model in memory;
the 7B's is a 14.5 GB file); the VAE and the image encoder are small enough to build whole and save
with their ``save_pretrained``. Each part goes to a temporary name first and is renamed when
complete, so a part that exists is whole.

The folder gets a marker (``MARKER``) naming the preset and seed before anything else is written:
a later call with the same preset completes what is missing; a folder that holds anything without
that marker (or with another preset's) is refused and left untouched: it is not this script's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ruyi.errors import CheckpointError

MARKER = "ruyi-random-weights.json"
WRITER = "benchmarks/random_checkpoint.py"
WEIGHTS = "diffusion_pytorch_model.safetensors"
SAFETENSORS_NAMES = {"torch.bfloat16": "BF16", "torch.float32": "F32", "torch.float16": "F16"}


def check_ours(root: Path, preset: str) -> bool:
    """Whether ``root`` may be written for ``preset``: True when it is this script's folder for that
    preset already, False when it does not exist or is empty; anything else raises (it is not ours)."""
    root = Path(root)
    if not root.exists():
        return False
    if not root.is_dir():
        raise CheckpointError(f"{root} is a file; give a folder for the random checkpoint")
    marker = root / MARKER
    if not marker.is_file():
        if any(root.iterdir()):
            raise CheckpointError(
                f"{root} holds files but no {MARKER}: {WRITER} did not write it, so it is left alone; "
                "give a new or empty folder"
            )
        return False
    try:
        made = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"{marker} is unreadable ({err}); remove the folder yourself if it is yours"
        ) from None
    if not isinstance(made, dict) or made.get("preset") != preset:
        found = made.get("preset") if isinstance(made, dict) else made
        raise CheckpointError(
            f"{root} holds the random checkpoint of preset {found!r}, not {preset!r}; give another folder"
        )
    return True


def write_random_checkpoint(
    root: Path, preset: str = "ruyi_mini_7b", *, seed: int = 0, device: str = "cpu"
) -> Path:
    """``root`` as a complete checkpoint of ``preset``'s shape with random weights (what is missing
    of it written; see the module docstring). ``device`` makes the transformer's random numbers."""
    import torch
    from safetensors.torch import save_file

    from ruyi.assembly import MODEL_KINDS, PipelineSpec
    from ruyi.conditioning.control import random_control_table
    from ruyi.hydra_config import load_preset
    from ruyi.models.image_encoder import random_image_encoder
    from ruyi.models.loading import quiet_progress, random_model

    root = Path(root)
    arch = load_preset(preset)
    if not check_ours(root, preset):
        root.mkdir(parents=True, exist_ok=True)
        (root / MARKER).write_text(
            json.dumps({"written_by": WRITER, "preset": preset, "seed": seed}, indent=2) + "\n"
        )
    spec = PipelineSpec.from_preset(preset)
    classes = {kind: getattr(spec, kind).cls for kind in MODEL_KINDS}
    dtype = getattr(torch, str(arch.get("dtype", "float32")))

    def vae(tmp: Path) -> None:
        model = random_model(
            classes["vae"], arch.get("vae_arch") or {}, dtype=dtype, device="cpu", seed=seed + 1
        )
        model.save_pretrained(tmp, safe_serialization=True)

    def image_encoder(tmp: Path) -> None:
        encoder = random_image_encoder(
            arch["image_encoder_arch"], arch["image_processor"], dtype=dtype, device="cpu", seed=seed + 2
        )
        encoder.vision.save_pretrained(tmp, safe_serialization=True)
        encoder.processor.save_pretrained(tmp)

    def scheduler(tmp: Path) -> None:
        tmp.mkdir()
        config = {"_class_name": "DDPMScheduler", **arch["scheduler_config"]}
        (tmp / "scheduler_config.json").write_text(json.dumps(config, indent=2) + "\n")

    def embeddings(tmp: Path) -> None:
        table = random_control_table(arch["transformer_arch"], torch.Generator().manual_seed(seed + 3))
        save_file(table, str(tmp))

    def model_index(tmp: Path) -> None:
        tmp.write_text(json.dumps({"_class_name": "RuyiInpaintPipeline"}, indent=2) + "\n")

    def transformer(tmp: Path) -> None:
        write_transformer(
            tmp, classes["transformer"], arch["transformer_arch"], dtype=dtype, seed=seed, device=device
        )

    parts = {"scheduler": scheduler, "embeddings.safetensors": embeddings, "model_index.json": model_index,
             "vae": vae, "image_encoder": image_encoder, "transformer": transformer}  # fmt: skip
    with quiet_progress():
        for name, write in parts.items():
            _remove(_partial(root / name))  # an interrupted run's (the folder is ours: marked)
            if not (root / name).exists():
                write_part(root / name, write)
    return root


def write_part(target: Path, write) -> None:
    """``write(tmp)`` then ``tmp`` renamed to ``target``; nothing of it left if it fails."""
    tmp = _partial(target)
    _remove(tmp)
    try:
        write(tmp)
        tmp.rename(target)
    except BaseException:
        _remove(tmp)
        raise


def _partial(target: Path) -> Path:
    return target.with_name(f".{target.name}.partial")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_transformer(
    folder: Path, cls: type, arch: dict, *, dtype=None, seed: int = 0, device: str = "cpu"
) -> Path:
    """``folder`` (new) with ``config.json`` and random N(0, 0.02) weights for ``cls`` at ``arch``'s
    shape, in ``dtype`` (bf16 unless given), written one tensor at a time: the model is built on the
    meta device, so memory holds one tensor, not the 14.5 GB of the 7B."""
    import torch
    from accelerate import init_empty_weights

    dtype = dtype or torch.bfloat16
    with init_empty_weights(include_buffers=True):
        model = cls.from_config({**arch, **getattr(cls, "config_overrides", {})})
    tensors = model.state_dict()
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, tensor in tensors.items():
        kind = dtype if tensor.is_floating_point() else tensor.dtype
        size = tensor.numel() * kind.itemsize
        header[name] = {
            "dtype": SAFETENSORS_NAMES[str(kind)],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format aligns the data to 8 bytes
    folder.mkdir(parents=True)
    generator = torch.Generator(device).manual_seed(seed)
    with open(folder / WEIGHTS, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)) + encoded)
        for tensor in tensors.values():
            if tensor.is_floating_point():
                value = torch.empty(tensor.shape, dtype=torch.float32, device=device).normal_(
                    0.0, 0.02, generator=generator
                )
                value = value.to(dtype)
            else:
                value = torch.zeros(tensor.shape, dtype=tensor.dtype)
            handle.write(value.cpu().reshape(-1).view(torch.uint8).numpy())
    model.save_config(folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument(
        "--preset", default="ruyi_mini_7b", help="a model preset of configs/model/ with its architecture"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--device",
        default=None,
        help="where the transformer's random numbers are made (default: cuda if present)",
    )
    args = parser.parse_args(argv)
    import time

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    start = time.perf_counter()
    try:
        root = write_random_checkpoint(args.dir, args.preset, seed=args.seed, device=device)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    print(
        f"random {args.preset} checkpoint at {root}: {size / 1024**3:.2f} GiB, {time.perf_counter() - start:.0f} s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
