"""ComfyUI nodes for Ruyi image-to-video (category "Ruyi"); pipelines come from ``ruyi.load_pipeline``.

Node names, widget names and widget order follow the original's nodes (Ruyi_LoadModel,
Ruyi_LoadLora, Ruyi_TeaCache, Ruyi_EnhanceAVideo, Ruyi_I2VSampler), so a workflow saved with them
loads here: ComfyUI's UI format stores widget values by position, so inputs the original did not
have come after its own. Dropdowns read ruyi's registries (``choices.py``).

This module imports without ComfyUI: ``folder_paths`` and ``comfy.*`` are imported where used.

The RUYI_MODEL passed between nodes is a frozen :class:`RuyiModel`: where the checkpoint is, its
load settings and the plugins to use. The LoRA / TeaCache / Enhance-A-Video nodes return a copy with
one more plugin. The sampler builds the pipeline (LoRAs merge while loading, before FP8 storage)
and keeps it until anything that went into building it changes.
"""

from __future__ import annotations

import dataclasses
import gc
import inspect
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import choices

log = logging.getLogger(__name__)

CATEGORY = "Ruyi"
MODELS_FOLDER = "Ruyi"  # ComfyUI/models/Ruyi/<model name>
MODEL_NAMES = ("Ruyi-Mini-7B",)
REPO_OWNER = "IamCreateAI"
RUYI_MODEL_TIP = "The model from Load Model, optionally through Load LoRA / Add TeaCache / Add Enhance-A-Video."


# -- the model object passed between nodes -----------------------------------------------------
@dataclass(frozen=True)
class RuyiModel:
    """A checkpoint folder, its load settings (registry names) and the plugins to attach."""

    path: Path
    offload: str = "model"
    precision: str = "bf16"
    fp8_data_type: str = "e4m3fn"
    loras: tuple = ()  # ruyi.plugins.LoRAWeights: merged into the weights while loading
    hooks: tuple = ()  # TeaCache / EnhanceAVideo: attached for each sampler run, detached after

    def with_lora(self, lora) -> RuyiModel:
        return dataclasses.replace(self, loras=(*self.loras, lora))

    def with_hook(self, hook) -> RuyiModel:
        kind = type(hook)
        return dataclasses.replace(self, hooks=(*(h for h in self.hooks if type(h) is not kind), hook))

    def without_hook(self, kind: type) -> RuyiModel:
        return dataclasses.replace(self, hooks=tuple(h for h in self.hooks if type(h) is not kind))


# -- ComfyUI helpers (lazy imports) --------------------------------------------------------------
def _folder_paths():
    import folder_paths

    return folder_paths


def ruyi_model_dirs() -> list[str]:
    """The folders searched for Ruyi checkpoints (``models/Ruyi`` and extra_model_paths entries)."""
    fp = _folder_paths()
    default = os.path.join(fp.models_dir, MODELS_FOLDER)
    try:
        dirs = list(fp.get_folder_paths(MODELS_FOLDER))
    except (KeyError, AttributeError):
        dirs = []
    return dirs or [default]


def available_models() -> list[str]:
    names = list(MODEL_NAMES)
    try:
        for folder in ruyi_model_dirs():
            if os.path.isdir(folder):
                names += sorted(n for n in os.listdir(folder) if (Path(folder, n) / "transformer").is_dir() and n not in names)
    except OSError as err:  # listing must never break ComfyUI's node registration
        log.warning("[Ruyi] could not list %s: %s", MODELS_FOLDER, err)
    return names


def installed_checkpoints() -> list[Path]:
    """The checkpoint folders Load Model offers that are on disk (for their camera labels)."""
    try:
        return [p for p in (resolve_model_path(n) for n in available_models()) if (p / "transformer").is_dir()]
    except Exception as err:  # noqa: BLE001 - listing must never break ComfyUI's node registration
        log.warning("[Ruyi] could not list the checkpoints: %s", err)
        return []


def resolve_model_path(name: str) -> Path:
    """The first ``<Ruyi dir>/<name>`` holding a checkpoint, else where a download would go."""
    dirs = ruyi_model_dirs()
    for folder in dirs:
        candidate = Path(folder) / name
        if (candidate / "transformer").is_dir():
            return candidate
    return Path(dirs[0]) / name


def _model_management():
    try:
        import comfy.model_management as mm

        return mm
    except ImportError:
        return None


def _device() -> torch.device:
    mm = _model_management()
    if mm is not None and hasattr(mm, "get_torch_device"):
        return torch.device(mm.get_torch_device())
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _free_memory() -> None:
    gc.collect()
    mm = _model_management()
    if mm is not None and hasattr(mm, "soft_empty_cache"):
        mm.soft_empty_cache()


class ComfyStepCallback:
    """Denoising-loop callback: advances ComfyUI's progress bar and honours its Cancel button."""

    def __init__(self, total: int) -> None:
        self.bar = None
        try:
            import comfy.utils

            self.bar = comfy.utils.ProgressBar(total)
        except ImportError:
            pass
        self.mm = _model_management()

    def on_step_begin(self, state) -> None:
        if self.mm is not None:
            # raises ComfyUI's InterruptProcessingException, which it reports as a clean stop
            self.mm.throw_exception_if_processing_interrupted()

    def on_step_end(self, state) -> None:
        if self.bar is not None:
            self.bar.update(1)


# -- tensors <-> images ------------------------------------------------------------------------------
def image_to_array(image: torch.Tensor) -> np.ndarray:
    """ComfyUI IMAGE [B, H, W, C] float in [0, 1] -> the first image as (H, W, 3) uint8."""
    from ruyi.errors import InputError

    if not isinstance(image, torch.Tensor) or image.ndim not in (3, 4):
        raise InputError(f"expected a ComfyUI IMAGE tensor [B, H, W, C], got {getattr(image, 'shape', type(image))}")
    first = image[0] if image.ndim == 4 else image
    if first.shape[-1] == 4:
        first = first[..., :3]
    elif first.shape[-1] == 1:
        first = first.expand(*first.shape[:-1], 3)
    if first.shape[-1] != 3:
        raise InputError(f"expected 1, 3 or 4 channels last, got image shape {tuple(image.shape)}")
    return (first.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def video_to_images(video: torch.Tensor) -> torch.Tensor:
    """Pipeline output (1, 3, F, H, W) in [0, 1] -> ComfyUI IMAGE batch [F, H, W, 3] float32."""
    return video[0].permute(1, 2, 3, 0).contiguous().float().cpu()


# -- pipeline cache ----------------------------------------------------------------------------------
_PIPELINE: dict[str, Any] = {"key": None, "pipe": None}


def build_options(model: RuyiModel, *, sampler: str, offload: str, skip_steps: int, device: torch.device) -> dict[str, Any]:
    """``ruyi.load_pipeline`` / ``PipelineSpec.from_names`` options for these settings (registry names)."""
    from ruyi.registry import PRECISIONS

    takes_fp8_type = "fp8_dtype" in inspect.signature(PRECISIONS.get(model.precision)).parameters
    return dict(
        sampler=sampler, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32, offload=offload,
        precision=model.precision, precision_kwargs={"fp8_dtype": model.fp8_data_type} if takes_fp8_type else {},
        skip_steps=skip_steps, device=device,
    )  # fmt: skip


def get_pipeline(model: RuyiModel, options: dict[str, Any]):
    """The pipeline for ``options`` (from :func:`build_options`) and the model's LoRAs, built by
    ``ruyi.load_pipeline``. Kept until any of them changes; the sampler is one of them, as the
    pipeline's sampler is never swapped after building (a scheduler change rebuilds)."""
    import ruyi
    from ruyi.plugins import LoRAWeights

    loras = tuple((str(lora.path), lora.strength) for lora in model.loras)
    key = (str(model.path), tuple(sorted((k, str(v)) for k, v in options.items())), loras)
    if _PIPELINE["key"] == key:
        return _PIPELINE["pipe"]
    _PIPELINE.update(key=None, pipe=None)
    _free_memory()
    # fresh instances: a LoRAWeights remembers the model it was merged into
    plugins = [LoRAWeights(path=lora.path, strength=lora.strength) for lora in model.loras]
    pipe = ruyi.load_pipeline(model.path, plugins=plugins, **options)
    _PIPELINE.update(key=key, pipe=pipe)
    return pipe


def clear_pipeline_cache() -> None:
    _PIPELINE.update(key=None, pipe=None)
    _free_memory()


# -- nodes ---------------------------------------------------------------------------------------------
class Ruyi_LoadModel:
    DESCRIPTION = "Locate a Ruyi checkpoint in models/Ruyi (downloading it if asked) and choose how it is loaded."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (available_models(), {"default": MODEL_NAMES[0], "tooltip": "A folder of models/Ruyi holding a Ruyi checkpoint."}),
                "auto_download": (["yes", "no"], {"default": "yes", "tooltip": "Download the checkpoint from Hugging Face if it is missing."}),
                "auto_update": (["yes", "no"], {"default": "yes", "tooltip": "Check Hugging Face for updated files at each load (with auto_download)."}),
                "fp8_quant_mode": (choices.precisions(), {"default": "bf16", "tooltip": "Transformer weight storage: bf16 keeps the compute dtype; fp8_lite / fp8_strong / fp8_extreme store more layers in FP8 (less memory). The original's none / lite / strong / extreme are accepted."}),
                "fp8_data_type": (choices.fp8_types(), {"default": "e4m3fn", "tooltip": 'FP8 storage type; do not use "e5m2" with fp8_extreme. The original\'s auto / fp8_e4m3fn / fp8_e5m2 are accepted.'}),
                "offload": (choices.offloads(), {"default": "model", "tooltip": "Used when the sampler's GPU_memory_mode is from_model. model: one model on the GPU at a time; sequential: layer by layer (least memory, slowest); group: streamed block groups; none: everything on the GPU."}),
            }
        }  # fmt: skip

    RETURN_TYPES = ("RUYI_MODEL",)
    RETURN_NAMES = ("ruyi_model",)
    OUTPUT_TOOLTIPS = ("The checkpoint and its load settings; the sampler loads the weights.",)
    FUNCTION = "load_model"
    CATEGORY = CATEGORY

    @classmethod
    def VALIDATE_INPUTS(cls, fp8_quant_mode, fp8_data_type):
        # ComfyUI leaves these inputs' list check to us, so the original's spellings are accepted
        return choices.validation_message((choices.precision_name, fp8_quant_mode), (choices.fp8_type_name, fp8_data_type))

    def load_model(self, model, auto_download="yes", auto_update="yes", fp8_quant_mode="bf16", fp8_data_type="e4m3fn", offload="model"):
        from ruyi.errors import ConfigError, MissingWeightsError

        precision, fp8_type = choices.precision_name(fp8_quant_mode), choices.fp8_type_name(fp8_data_type)
        if offload not in choices.offloads():
            raise ConfigError(f"offload={offload!r} is not one of {', '.join(choices.offloads())}")
        path = resolve_model_path(model)
        present = (path / "transformer").is_dir()
        repo_id = f"{REPO_OWNER}/{model}"
        if auto_download == "yes" and (not present or auto_update == "yes"):
            try:
                from huggingface_hub import snapshot_download

                log.info("[Ruyi] %s %s into %s", "updating" if present else "downloading", repo_id, path)
                snapshot_download(repo_id=repo_id, local_dir=str(path))
            except Exception as err:  # noqa: BLE001 - offline with a local copy is fine
                if not present:
                    raise MissingWeightsError(f"[Ruyi] downloading {repo_id} failed ({type(err).__name__}: {err}); {_hint(repo_id, path)}") from None
                log.warning("[Ruyi] update check for %s failed (%s); using the local copy", repo_id, err)
        if not (path / "transformer").is_dir():
            hint = _hint(repo_id, path)
            raise MissingWeightsError(f"[Ruyi] {model} not found at {path}; {hint}" + ("" if auto_download == "yes" else ", or set auto_download to yes"))
        return (RuyiModel(path=path, offload=offload, precision=precision, fp8_data_type=fp8_type),)


def _hint(repo_id: str, path: Path) -> str:
    return f"download it with `huggingface-cli download {repo_id} --local-dir {path}`"


class Ruyi_LoadLora:
    DESCRIPTION = "Merge a LoRA from models/loras into the transformer when the sampler loads it."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "ruyi_model": ("RUYI_MODEL", {"tooltip": RUYI_MODEL_TIP}),
                "lora_name": (_folder_paths().get_filename_list("loras"), {"tooltip": "A .safetensors LoRA in models/loras (the original's lora_down/lora_up keys or peft's lora_A/lora_B)."}),
                "strength_model": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01, "tooltip": "Scale of the LoRA delta; 1.0-1.4 works well, 0 skips the LoRA."}),
            }
        }  # fmt: skip

    RETURN_TYPES = ("RUYI_MODEL",)
    RETURN_NAMES = ("ruyi_model",)
    FUNCTION = "load_lora"
    CATEGORY = CATEGORY

    def load_lora(self, ruyi_model: RuyiModel, lora_name: str, strength_model: float):
        from ruyi.errors import InputError
        from ruyi.plugins import LoRAWeights

        if not lora_name or strength_model == 0:
            return (ruyi_model,)
        path = _folder_paths().get_full_path("loras", lora_name)
        if path is None:
            raise InputError(f"[Ruyi] LoRA {lora_name!r} not found in the loras folder")
        return (ruyi_model.with_lora(LoRAWeights(path=path, strength=float(strength_model))),)


class Ruyi_TeaCache:
    DESCRIPTION = "Skip the transformer on steps whose input barely changed (faster, slightly lower quality)."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "ruyi_model": ("RUYI_MODEL", {"tooltip": RUYI_MODEL_TIP}),
                "enable": ("BOOLEAN", {"default": True, "tooltip": "Enable TeaCache."}),
                "threshold": ("FLOAT", {"default": 0.10, "min": 0.0, "max": 0.50, "step": 0.01,
                                        "tooltip": "0.10 caches 6-8 of 25 steps, 0.15 caches 10-12."}),
                "skip_start_steps": ("INT", {"default": 3, "min": 1, "step": 1, "tooltip": "First n steps do not use TeaCache."}),
                "skip_end_steps": ("INT", {"default": 1, "min": 1, "step": 1, "tooltip": "Last n steps do not use TeaCache."}),
                "offload_cpu": ("BOOLEAN", {"default": True, "tooltip": "Keep TeaCache tensors on the CPU to save GPU memory."}),
            }
        }  # fmt: skip

    RETURN_TYPES = ("RUYI_MODEL",)
    RETURN_NAMES = ("ruyi_model",)
    FUNCTION = "tea_cache"
    CATEGORY = CATEGORY

    def tea_cache(self, ruyi_model: RuyiModel, enable, threshold, skip_start_steps, skip_end_steps, offload_cpu):
        from ruyi.plugins import TeaCache

        if not enable:
            return (ruyi_model.without_hook(TeaCache),)
        plugin = TeaCache(threshold=float(threshold), skip_start_steps=int(skip_start_steps),
                          skip_end_steps=int(skip_end_steps), offload_cpu=bool(offload_cpu))  # fmt: skip
        return (ruyi_model.with_hook(plugin),)


class Ruyi_EnhanceAVideo:
    DESCRIPTION = "Strengthen cross-frame consistency by scaling self-attention."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "ruyi_model": ("RUYI_MODEL", {"tooltip": RUYI_MODEL_TIP}),
                "enable": ("BOOLEAN", {"default": True, "tooltip": "Enable Enhance-A-Video."}),
                "weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 9.99, "step": 0.01,
                                     "tooltip": "Cross-frame consistency strength; keep it below 5."}),
                "skip_start_steps": ("INT", {"default": 0, "min": 0, "step": 1, "tooltip": "First n steps do not use Enhance-A-Video."}),
                "skip_end_steps": ("INT", {"default": 0, "min": 0, "step": 1, "tooltip": "Last n steps do not use Enhance-A-Video."}),
            }
        }  # fmt: skip

    RETURN_TYPES = ("RUYI_MODEL",)
    RETURN_NAMES = ("ruyi_model",)
    FUNCTION = "enhance_a_video"
    CATEGORY = CATEGORY

    def enhance_a_video(self, ruyi_model: RuyiModel, enable, weight, skip_start_steps, skip_end_steps):
        from ruyi.plugins import EnhanceAVideo

        if not enable or weight == 0:
            return (ruyi_model.without_hook(EnhanceAVideo),)
        plugin = EnhanceAVideo(weight=float(weight), skip_start_steps=int(skip_start_steps), skip_end_steps=int(skip_end_steps))
        return (ruyi_model.with_hook(plugin),)


class Ruyi_I2VSampler:
    DESCRIPTION = "Generate a video from a start frame (and an optional end frame). Save it with CreateVideo (fps 24) + SaveVideo."

    @classmethod
    def INPUT_TYPES(cls):
        cameras, motions = choices.control_choices(installed_checkpoints())
        return {
            "required": {
                "ruyi_model": ("RUYI_MODEL", {"tooltip": RUYI_MODEL_TIP}),
                "video_length": ("INT", {"default": 72, "min": 8, "max": 120, "step": 8, "tooltip": "Frames to generate: a multiple of 8 up to 120 (24 fps: 120 frames = 5 s)."}),
                "base_resolution": ("INT", {"default": 512, "min": 384, "max": 1024, "step": 16, "tooltip": "Resolution class; the size is the aspect bucket closest to the start image (512 or 768 as trained)."}),
                "seed": ("INT", {"default": 42, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip": "Same seed and settings, same video."}),
                "steps": ("INT", {"default": 25, "min": 1, "max": 200, "step": 1, "tooltip": "Denoising steps (PNDM needs at least 4)."}),
                "cfg": ("FLOAT", {"default": 7.0, "min": 1.0, "max": 20.0, "step": 0.01, "tooltip": "Classifier-free guidance scale; 1 disables guidance."}),
                "scheduler": (choices.sampler_labels(), {"default": "DDIM", "tooltip": "Sampler (ruyi's sampler registry)."}),
                "motion": (motions, {"default": "2", "tooltip": "Motion amplitude: 1 nearly static .. 4 very large, or auto."}),
                "camera_direction": (cameras, {"default": "static", "tooltip": "Camera movement."}),
                "GPU_memory_mode": (choices.memory_modes(), {"default": choices.FROM_MODEL, "tooltip": "from_model: Load Model's offload; normal_mode: model offload; low_memory_mode: sequential offload."}),
                "GPU_offload_steps": (list(choices.GPU_OFFLOAD_STEPS), {"default": "0", "tooltip": "Park long-skip activations in CPU RAM in groups of n blocks (less GPU memory, slower); 0 = off."}),
                "start_img": ("IMAGE", {"tooltip": "The first frame of the video."}),
            },
            "optional": {
                "end_img": ("IMAGE", {"tooltip": "Optional last frame of the video."}),
                "video_height": ("INT", {"default": 0, "min": 0, "max": 2048, "step": 16, "tooltip": "0: from base_resolution and the start image's aspect ratio; else a multiple of 16 (with video_width)."}),
                "video_width": ("INT", {"default": 0, "min": 0, "max": 2048, "step": 16, "tooltip": "0: from base_resolution and the start image's aspect ratio; else a multiple of 16 (with video_height)."}),
                "keyframes": ("RUYI_KEYFRAMES", {"tooltip": "Images at further frames (the Keyframes node); start_img is frame 0, end_img the last."}),
            },
        }  # fmt: skip

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("The video as an IMAGE batch [frames, H, W, 3], 24 fps.",)
    FUNCTION = "process"
    CATEGORY = CATEGORY

    @classmethod
    def VALIDATE_INPUTS(cls, scheduler):
        return choices.validation_message((choices.sampler_name, scheduler))

    def process(
        self, ruyi_model: RuyiModel, video_length, base_resolution, seed, steps, cfg, scheduler, motion,
        camera_direction, GPU_memory_mode, GPU_offload_steps, start_img, end_img=None, video_height=0, video_width=0,
        keyframes=None,
    ):  # fmt: skip
        from ruyi.assembly import PipelineSpec
        from ruyi.conditioning.keyframes import merge_keyframes, parse_keyframes
        from ruyi.errors import ConfigError
        from ruyi.extension import attached
        from ruyi.pipeline import check_frames

        if not isinstance(ruyi_model, RuyiModel):
            raise ConfigError(f"ruyi_model must come from a Ruyi Load Model node, got {type(ruyi_model).__name__}")
        # every choice is checked before any weight loads
        check_frames(int(video_length))
        sampler = choices.sampler_name(scheduler)
        offload = choices.offload_name(GPU_memory_mode, ruyi_model.offload)
        if bool(video_height) != bool(video_width):
            raise ConfigError("set both video_height and video_width, or neither (0 = from base_resolution)")
        video_size = [int(video_height), int(video_width)] if video_height else None
        start = image_to_array(start_img)
        end = image_to_array(end_img) if end_img is not None else None
        merge_keyframes(start, end, parse_keyframes(list(keyframes or ())), frames=int(video_length))  # before loading

        options = build_options(ruyi_model, sampler=sampler, offload=offload, skip_steps=int(GPU_offload_steps), device=_device())
        # the whole combination, the per-run hooks included, is checked before any weight loads
        PipelineSpec.from_names(ruyi_model.path, plugins=[*ruyi_model.loras, *ruyi_model.hooks], **options).validate()
        pipe = get_pipeline(ruyi_model, options)
        with attached(pipe, ruyi_model.hooks):  # the assembly's loop, for this run only
            video = pipe(
                start, end, frames=int(video_length), base_resolution=int(base_resolution), video_size=video_size,
                steps=int(steps), cfg=float(cfg), seed=int(seed) % 2**63, camera=camera_direction, motion=motion,
                keyframes=list(keyframes or ()), callbacks=[ComfyStepCallback(int(steps))], progress=False,
            )  # fmt: skip
        return (video_to_images(video),)


NODE_CLASS_MAPPINGS = {
    "Ruyi_LoadModel": Ruyi_LoadModel,
    "Ruyi_LoadLora": Ruyi_LoadLora,
    "Ruyi_TeaCache": Ruyi_TeaCache,
    "Ruyi_EnhanceAVideo": Ruyi_EnhanceAVideo,
    "Ruyi_I2VSampler": Ruyi_I2VSampler,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "Ruyi_LoadModel": "Load Model",
    "Ruyi_LoadLora": "Load LoRA",
    "Ruyi_TeaCache": "Add TeaCache",
    "Ruyi_EnhanceAVideo": "Add Enhance-A-Video",
    "Ruyi_I2VSampler": "Sampler for Image to Video",
}
