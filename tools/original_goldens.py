"""Regression goldens for the samplers, computed by RUNNING THE ORIGINAL Ruyi-Models code.

    python tools/original_goldens.py /path/to/Ruyi-Models [--fixture DIR] [--out tests/goldens]

``/path/to/Ruyi-Models`` is a checkout of github.com/IamCreateAI/Ruyi-Models; its pipeline and
models are imported from there (nothing of it is copied here: its outputs are facts, its code is
not ours). The tiny checkpoint of ``../shared/fixtures/ruyi-tiny`` is loaded as that fixture's
README says the original loads it, and the whole image-to-video call runs on the CPU in float32
for every case of ``CASES``. The result, ``original_samplers.safetensors`` + ``.json``, has the
fixture's ``end_to_end`` case format, so ``tests/test_golden.py``'s runner checks it.

Before writing anything the script re-runs the fixture's own ``end_to_end`` cases with the same
recipe and stops unless they match ``golden.safetensors``: a recipe that drifted from the one the
fixture was made with would otherwise produce goldens of something else.

Both projects name their package ``ruyi``: the checkout goes first on ``sys.path`` and the
script checks that the ``ruyi`` it imported is the original's. The original runs on the
diffusers/transformers installed here (the fixture's configs were written by diffusers 0.42.1);
of its other requirements only ``pkg_resources`` (gone from newer setuptools), ``cv2`` and
``torchvision`` are imported on this path, and they are shimmed below rather than installed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import subprocess
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FIXTURE = REPO.parent / "shared" / "fixtures" / "ruyi-tiny"
DEFAULT_OUT = REPO / "tests" / "goldens"
STEM = "original_samplers"

# The fixture's README: the three settings the original applies on top of transformer/config.json
# (its config/default.yaml), the CLIP share, the add-time-ids' original size and the 16:9 control
# embeddings that predict_i2v.py uses.
TRANSFORMER_SETTINGS = {"basic_block_type": "basic", "after_norm": False, "time_position_encoding": True}
CLIP_APPLY_RATIO = 0.4
ORIGINAL_SIZE = [1024, 1024]
ASPECT = "16x9"
SEED = 42  # the generator Euler A draws its step noise from
# what the goldens depend on: the test skips them on a fixture whose files differ
FIXTURE_FILES = (
    "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors", "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors", "image_encoder/config.json", "image_encoder/model.safetensors",
    "image_encoder/preprocessor_config.json", "scheduler/scheduler_config.json", "embeddings.safetensors",
    "start.png", "end.png",
)  # fmt: skip
END_TO_END_TOL = 1e-4  # the fixture README's end-to-end tolerance (relative to the golden's max)
NOTE = (
    "computed by the original Ruyi-Models code (see produced_by); initial_latents are passed in and "
    "multiplied by the sampler's init_noise_sigma; conditioning latents (mask and masked video) are the "
    "VAE posterior MEAN times scaling_factor; the step noise of stochastic samplers comes from a CPU "
    "torch.Generator seeded with `seed`; video in [0,1], (1,3,F,H,W), after the original's clamp"
)


@dataclass(frozen=True)
class Case:
    name: str
    sampler: str  # the original's label
    steps: int
    end_image: str | None
    guidance_scale: float = 7.0
    motion: str = "auto"
    camera: str = "auto"
    video_length: int = 8
    height: int = 16
    width: int = 32
    plugins: dict = field(default_factory=dict)  # {our registry name: our constructor's options}


# PNDM evaluates the model more often than it takes steps (4 calls for each of its first 3
# steps), and the original switches CLIP on by the index of that evaluation: at 4 and 5 steps the
# two ways of counting give different CLIP windows. The other samplers evaluate once per step;
# at 5 steps every sampler has its own timesteps or update rule. Small shapes keep the file small.
CASES = (
    Case("pndm_4_start", "PNDM", 4, None, motion="2", camera="left"),
    Case("pndm_4_start_end", "PNDM", 4, "end.png", motion="auto", camera="static"),
    Case("pndm_4_start_nocfg", "PNDM", 4, None, guidance_scale=1.0, motion="1", camera="up"),
    Case("pndm_5_start", "PNDM", 5, None, motion="4", camera="right"),
    Case("pndm_5_start_end", "PNDM", 5, "end.png", motion="3", camera="down"),  # a key absent from the table
    Case("ddim_5_start_end", "DDIM", 5, "end.png", motion="1", camera="auto"),
    Case("euler_5_start", "Euler", 5, None, motion="auto", camera="left"),
    Case("euler_a_5_start_end", "Euler A", 5, "end.png", motion="2", camera="down"),
    Case("dpmpp_5_start", "DPM++", 5, None, motion="4", camera="static"),  # another absent key
    # The original's TeaCache and Enhance-A-Video counters count transformer calls too (TeaCache's
    # starts over every `steps` calls): PNDM's 14 calls for 5 steps tell that apart from steps.
    # threshold 0.10 (the original's suggestion) both skips and computes here, far from the edge.
    Case("pndm_5_teacache", "PNDM", 5, "end.png", motion="1", camera="left",
         plugins={"teacache": {"threshold": 0.10, "skip_start_steps": 2, "skip_end_steps": 1}}),
    Case("pndm_5_enhance_a_video", "PNDM", 5, None, motion="2", camera="right",
         plugins={"enhance_a_video": {"weight": 4.0, "skip_start_steps": 1, "skip_end_steps": 1}}),
)  # fmt: skip


# -- the original code ---------------------------------------------------------------------------
@contextlib.contextmanager
def stub_modules(*names: str):
    """Empty modules for packages the original imports but never calls on this path (video
    writing and colour transfer in ruyi/utils/utils.py); removed again so that nothing else
    mistakes them for the real packages."""
    added = [n for n in names if n not in sys.modules]
    for name in added:
        sys.modules[name] = types.ModuleType(name)
    try:
        yield
    finally:
        for name in added:
            sys.modules.pop(name, None)


def import_original(checkout: Path) -> types.SimpleNamespace:
    if "ruyi" in sys.modules:
        raise RuntimeError("a package named ruyi is already imported; run this script in a fresh interpreter")
    sys.path.insert(0, str(checkout))
    try:
        import pkg_resources  # noqa: F401 - the original parses diffusers' version with it
    except ImportError:  # newer setuptools no longer ship it; parse_version is all the original uses
        from packaging.version import parse

        sys.modules["pkg_resources"] = types.SimpleNamespace(parse_version=parse)  # type: ignore[assignment]
    import diffusers
    import transformers
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
    from ruyi.models.autoencoder_magvit import AutoencoderKLMagvit
    from ruyi.models.transformer3d import HunyuanTransformer3DModel
    from ruyi.pipeline.pipeline_ruyi_inpaint import RuyiInpaintPipeline
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    with stub_modules("cv2", "torchvision"):
        from ruyi.utils.utils import get_image_to_video_latent

    module = sys.modules["ruyi"]
    if not str(Path(module.__file__).resolve()).startswith(str(checkout.resolve())):
        raise RuntimeError(f"imported ruyi from {module.__file__}, not from {checkout}")
    # The fixture's goldens use the posterior mean for the conditioning latents (deterministic);
    # the original samples from the posterior with the global RNG.
    DiagonalGaussianDistribution.sample = lambda self, generator=None: self.mean
    samplers = {
        "DDIM": diffusers.DDIMScheduler,
        "Euler": diffusers.EulerDiscreteScheduler,
        "Euler A": diffusers.EulerAncestralDiscreteScheduler,
        "DPM++": diffusers.DPMSolverMultistepScheduler,
        "PNDM": diffusers.PNDMScheduler,
    }
    versions = {"diffusers": diffusers.__version__, "transformers": transformers.__version__}
    return types.SimpleNamespace(
        vae_cls=AutoencoderKLMagvit, transformer_cls=HunyuanTransformer3DModel,
        pipeline_cls=RuyiInpaintPipeline, image_to_video=get_image_to_video_latent,
        clip_encoder_cls=CLIPVisionModelWithProjection, clip_processor_cls=CLIPImageProcessor,
        samplers=samplers, versions={**versions, "torch": torch.__version__},
    )  # fmt: skip


def check_weights_loaded(model: torch.nn.Module, weights: Path) -> None:
    """The original loads with strict=False; a key it silently skipped would leave random weights."""
    stored = load_file(str(weights))
    missing = [k for k in model.state_dict() if k not in stored]
    unused = [k for k in stored if k not in model.state_dict()]
    if missing or unused:
        raise RuntimeError(
            f"{weights}: {len(missing)} missing keys {missing[:4]}, {len(unused)} unused {unused[:4]}"
        )


def load_original(orig: types.SimpleNamespace, fixture: Path):
    vae = orig.vae_cls.from_pretrained(str(fixture), subfolder="vae").float().eval()
    check_weights_loaded(vae, fixture / "vae" / "diffusion_pytorch_model.safetensors")
    transformer = orig.transformer_cls.from_pretrained_2d(
        str(fixture), subfolder="transformer", transformer_additional_kwargs=dict(TRANSFORMER_SETTINGS)
    ).float().eval()  # fmt: skip
    check_weights_loaded(transformer, fixture / "transformer" / "diffusion_pytorch_model.safetensors")
    encoder = fixture / "image_encoder"
    pipe = orig.pipeline_cls(
        vae=vae, transformer=transformer,
        # replaced per case, as predict_i2v.py replaces it by the chosen sampler
        scheduler=orig.samplers["DDIM"].from_pretrained(str(fixture), subfolder="scheduler"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        clip_image_encoder=orig.clip_encoder_cls.from_pretrained(str(encoder)).float().eval(),
        clip_image_processor=orig.clip_processor_cls.from_pretrained(str(encoder)),
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe, load_file(str(fixture / "embeddings.safetensors"))


def embedding_key(motion: str, camera: str) -> str:
    return f"p.{ASPECT}movie{'0' if motion == 'auto' else motion}{camera}"


def control_embeddings(table: dict, key: str) -> dict:
    """Positive fields of ``key`` (each falling back to ``p.default``), negatives from ``n.default``."""
    fields = {"embeds": "emb1", "attention_mask": "mask1", "embeds_2": "emb2", "attention_mask_2": "mask2"}
    out = {}
    for arg, name in fields.items():
        out[f"prompt_{arg}"] = table.get(f"{key}.{name}", table[f"p.default.{name}"])
        out[f"negative_prompt_{arg}"] = table[f"n.default.{name}"]
    return out


def initialize_plugins(transformer, case: dict) -> None:
    """As predict_i2v.py does before every call: both plugins set up for the user's steps,
    enabled when the case names them."""
    plugins = case.get("plugins") or {}
    tea, eav = plugins.get("teacache", {}), plugins.get("enhance_a_video", {})
    transformer.tea_cache.initialize(
        "teacache" in plugins, tea.get("threshold", 0.0), tea.get("skip_start_steps", 1),
        tea.get("skip_end_steps", 1), case["steps"], tea.get("offload_cpu", False),
    )  # fmt: skip
    transformer.enhance_a_video.initialize(
        "enhance_a_video" in plugins, eav.get("weight", 0.0), eav.get("skip_start_steps", 0),
        eav.get("skip_end_steps", 0), case["steps"],
    )  # fmt: skip


def run_original(orig, pipe, table, fixture: Path, case: dict, initial_latents: torch.Tensor):
    """The whole image-to-video call -> (final_latents before decode, video in [0, 1])."""
    from PIL import Image

    pipe.scheduler = orig.samplers[case["sampler"]].from_pretrained(str(fixture), subfolder="scheduler")
    initialize_plugins(pipe.transformer, case)
    start = [Image.open(fixture / case["start_image"]).convert("RGB")]
    end = [Image.open(fixture / case["end_image"]).convert("RGB")] if case.get("end_image") else None
    height, width = case["height"], case["width"]
    video, mask, clip_image = orig.image_to_video(
        start, end, video_length=case["video_length"], sample_size=(height, width)
    )
    final = {}
    decode = pipe.decode_latents

    def keep_latents(latents):
        final["latents"] = latents.detach().clone()
        return decode(latents)

    pipe.decode_latents = keep_latents
    try:
        out = pipe(
            **control_embeddings(table, case["embedding_key"]),
            video_length=case["video_length"], height=height, width=width, num_inference_steps=case["steps"],
            guidance_scale=case["guidance_scale"], eta=case["eta"], latents=initial_latents.clone(),
            generator=torch.Generator("cpu").manual_seed(case["seed"]), video=video, mask_video=mask,
            clip_image=clip_image, clip_apply_ratio=case["clip_apply_ratio"],
            original_size=tuple(case["original_size"]),
        ).videos  # fmt: skip
    finally:
        pipe.decode_latents = decode
    return final["latents"].float(), out.float()


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-12))


def check_recipe(orig, pipe, table, fixture: Path) -> None:
    """The fixture's own end_to_end cases, re-run: the recipe must reproduce them."""
    golden = load_file(str(fixture / "golden.safetensors"))
    cases = [
        c for c in json.loads((fixture / "golden.json").read_text())["cases"] if c["kind"] == "end_to_end"
    ]
    if not cases:
        raise RuntimeError(f"{fixture} has no end_to_end case to check the recipe against")
    for case in cases:
        case = {"seed": SEED, **case}
        latents, video = run_original(
            orig, pipe, table, fixture, case, golden[case["inputs"]["initial_latents"]]
        )
        errors = (
            rel_err(latents, golden[case["outputs"]["final_latents"]]),
            rel_err(video, golden[case["outputs"]["video"]]),
        )
        print(f"recipe check {case['name']}: rel. max error latents {errors[0]:.2e}, video {errors[1]:.2e}")
        if max(errors) > END_TO_END_TOL:
            raise RuntimeError(
                f"the recipe does not reproduce the fixture's {case['name']}; not writing goldens"
            )


def case_record(case: Case, vae) -> tuple[dict, torch.Tensor]:
    """The JSON record of ``case`` in the fixture's end_to_end format, and its initial latents."""
    frames = case.video_length // vae.mini_batch_encoder * vae.mini_batch_decoder
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    shape = (1, vae.config.latent_channels, frames, case.height // factor, case.width // factor)
    seed = 1000 + [c.name for c in CASES].index(case.name)  # stable per case, whatever the order
    latents = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)
    record = {
        "name": case.name, "kind": "end_to_end", "start_image": "start.png", "end_image": case.end_image,
        "video_length": case.video_length, "height": case.height, "width": case.width, "steps": case.steps,
        "guidance_scale": case.guidance_scale, "sampler": case.sampler, "motion": case.motion,
        "camera": case.camera, "embedding_key": embedding_key(case.motion, case.camera), "eta": 0.0,
        "clip_apply_ratio": CLIP_APPLY_RATIO, "original_size": ORIGINAL_SIZE, "seed": SEED,
        "initial_latents_seed": seed, **({"plugins": case.plugins} if case.plugins else {}),
        "inputs": {"initial_latents": f"{case.name}.initial_latents"},
        "outputs": {"final_latents": f"{case.name}.final_latents", "video": f"{case.name}.video"},
        "note": NOTE,
    }  # fmt: skip
    return record, latents


def fixture_digests(fixture: Path) -> dict[str, str]:
    return {name: hashlib.sha256((fixture / name).read_bytes()).hexdigest() for name in FIXTURE_FILES}


def git_head(checkout: Path) -> str:
    try:
        command = ["git", "-C", str(checkout), "rev-parse", "HEAD"]
        return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("original", type=Path, help="a checkout of IamCreateAI/Ruyi-Models")
    parser.add_argument("--fixture", type=Path, default=DEFAULT_FIXTURE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    torch.manual_seed(0)  # nothing should draw from the global RNG; if something does, runs still repeat
    torch.set_grad_enabled(False)
    orig = import_original(args.original)
    pipe, table = load_original(orig, args.fixture)
    check_recipe(orig, pipe, table, args.fixture)
    records, tensors = [], {}
    for case in CASES:
        record, initial = case_record(case, pipe.vae)
        latents, video = run_original(orig, pipe, table, args.fixture, record, initial)
        if "teacache" in case.plugins:
            record["teacache_skipped_calls"] = pipe.transformer.tea_cache.skip_count
        tensors[record["inputs"]["initial_latents"]] = initial
        tensors[record["outputs"]["final_latents"]] = latents
        tensors[record["outputs"]["video"]] = video
        records.append(record)
        print(f"{case.name}: latents {tuple(latents.shape)}, video {tuple(video.shape)}")
    producer = {
        "code": "github.com/IamCreateAI/Ruyi-Models", "commit": git_head(args.original),
        "command": "python tools/original_goldens.py <Ruyi-Models checkout>",
        **orig.versions, "device": "cpu", "dtype": "float32",
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(args.out / f"{STEM}.safetensors"))
    fixture = {"name": args.fixture.name, "sha256": fixture_digests(args.fixture)}
    document = {"format": 1, "produced_by": producer, "fixture": fixture, "cases": records}
    (args.out / f"{STEM}.json").write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {len(records)} cases to {args.out / STEM}.{{json,safetensors}}")


if __name__ == "__main__":
    main()
