"""ComfyUI nodes for Ruyi image-to-video, on top of ``ruyi.pipeline.RuyiPipeline``.

Node names and inputs follow the original's ComfyUI nodes (Ruyi_LoadModel, Ruyi_LoadLora,
Ruyi_TeaCache, Ruyi_EnhanceAVideo, Ruyi_I2VSampler) so their workflows keep working.

This module imports without ComfyUI: ``folder_paths``, ``comfy.utils`` and ``comfy.model_management``
are imported inside the functions that need them.

The RUYI_MODEL passed between nodes is a :class:`RuyiModel`: where the checkpoint is, how to load it,
and the plugins to use. Nodes never mutate it; the LoRA / TeaCache / Enhance-A-Video nodes return a
copy with one more plugin. The pipeline itself is built by the sampler (LoRAs merge while loading,
before an FP8 precision strategy) and cached until the load settings or LoRAs change.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

CATEGORY = "Ruyi"
MODELS_FOLDER = "Ruyi"  # ComfyUI/models/Ruyi/<model name>
MODEL_NAMES = ("Ruyi-Mini-7B",)
REPO_OWNER = "IamCreateAI"
OFFLOADS = ("model", "none", "sequential", "group")
PRECISIONS = ("bf16", "fp8_lite", "fp8_strong", "fp8_extreme")
FP8_DATA_TYPES = ("e4m3fn", "e5m2")
SCHEDULERS = ("Euler", "Euler A", "DPM++", "PNDM", "DDIM")
MOTIONS = ("1", "2", "3", "4", "auto")
CAMERAS = ("static", "left", "right", "up", "down", "auto")
GPU_MEMORY_MODES = ("from_model", "normal_mode", "low_memory_mode")  # -> the model's offload / model / sequential
GPU_OFFLOAD_STEPS = ("0", "1", "5", "7", "10")
MEMORY_MODE_OFFLOAD = {"normal_mode": "model", "low_memory_mode": "sequential"}


# -- the model object passed between nodes -----------------------------------------------------
@dataclass(frozen=True)
class RuyiModel:
    """A checkpoint folder, its load settings and the plugins to attach (LoRAs first)."""

    path: Path
    offload: str = "model"
    precision: str = "bf16"
    fp8_data_type: str = "e4m3fn"
    loras: tuple = ()  # ruyi.plugins.LoRAWeights: merged into the weights while loading
    hooks: tuple = ()  # TeaCache / EnhanceAVideo: attached for each sampler run
    extras: dict[str, Any] = field(default_factory=dict, compare=False)

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
    except Exception:  # noqa: BLE001 - listing must never break ComfyUI's node registration
        pass
    return names


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
        if self.mm is None:
            return
        if hasattr(self.mm, "throw_exception_if_processing_interrupted"):
            self.mm.throw_exception_if_processing_interrupted()  # ComfyUI treats this as a clean stop
        elif getattr(self.mm, "processing_interrupted", lambda: False)():
            raise InterruptedError("Ruyi sampling interrupted")

    def on_step_end(self, state) -> None:
        if self.bar is not None:
            self.bar.update(1)


# -- tensors <-> images ------------------------------------------------------------------------------
def image_to_array(image: torch.Tensor) -> np.ndarray:
    """ComfyUI IMAGE [B, H, W, C] float in [0, 1] -> the first image as (H, W, 3) uint8."""
    if not isinstance(image, torch.Tensor) or image.ndim not in (3, 4):
        raise ValueError(f"expected a ComfyUI IMAGE tensor [B, H, W, C], got {getattr(image, 'shape', type(image))}")
    first = image[0] if image.ndim == 4 else image
    if first.shape[-1] == 4:
        first = first[..., :3]
    elif first.shape[-1] == 1:
        first = first.expand(*first.shape[:-1], 3)
    if first.shape[-1] != 3:
        raise ValueError(f"expected 1, 3 or 4 channels last, got image shape {tuple(image.shape)}")
    return (first.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def video_to_images(video: torch.Tensor) -> torch.Tensor:
    """Pipeline output (1, 3, F, H, W) in [0, 1] -> ComfyUI IMAGE batch [F, H, W, 3] float32."""
    return video[0].permute(1, 2, 3, 0).contiguous().float().cpu()


# -- pipeline cache ----------------------------------------------------------------------------------
_PIPELINE: dict[str, Any] = {"key": None, "pipe": None}


def _spec_options(model: RuyiModel, *, offload: str, skip_steps: int, device: torch.device, sampler: str) -> dict:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    # the FP8 strategies default to e4m3fn; another storage dtype needs a constructor argument
    precision_kwargs = {} if model.precision == "bf16" else {"fp8_dtype": model.fp8_data_type}
    return dict(sampler=sampler, dtype=dtype, offload=offload, precision=model.precision,
                precision_kwargs=precision_kwargs, skip_steps=skip_steps, device=device)  # fmt: skip


def get_pipeline(model: RuyiModel, *, offload: str, skip_steps: int, device: torch.device, sampler: str = "ddim"):
    """The pipeline for these settings: cached, rebuilt when the checkpoint, sampler, memory settings or LoRAs change."""
    import ruyi

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    loras = tuple((str(lora.path), lora.strength) for lora in model.loras)
    key = (str(model.path), offload, model.precision, model.fp8_data_type, skip_steps, str(device), dtype, loras, sampler)
    if _PIPELINE["key"] == key:
        return _PIPELINE["pipe"]
    _PIPELINE.update(key=None, pipe=None)
    _free_memory()
    # fresh LoRA instances: a LoRAWeights remembers the model it is merged into
    from ruyi.plugins import LoRAWeights

    plugins = [LoRAWeights(path=lora.path, strength=lora.strength) for lora in model.loras]
    options = _spec_options(model, offload=offload, skip_steps=skip_steps, device=device, sampler=sampler)
    pipe = ruyi.load_pipeline(model.path, plugins=plugins, **options)
    _PIPELINE.update(key=key, pipe=pipe)
    return pipe


def clear_pipeline_cache() -> None:
    _PIPELINE.update(key=None, pipe=None)
    _free_memory()


# -- nodes ---------------------------------------------------------------------------------------------
class Ruyi_LoadModel:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (available_models(), {"default": MODEL_NAMES[0]}),
                "auto_download": (["yes", "no"], {"default": "yes", "tooltip": "Download from Hugging Face if missing."}),
                "auto_update": (["yes", "no"], {"default": "yes", "tooltip": "Check Hugging Face for updated files."}),
                "offload": (list(OFFLOADS), {"default": "model", "tooltip": "model: one model on the GPU at a time; sequential: layer by layer (least memory, slowest); group: block groups; none: all on the GPU."}),
                "fp8_quant_mode": (list(PRECISIONS), {"default": "bf16", "tooltip": "bf16: no quantisation; fp8_lite / fp8_strong / fp8_extreme store more transformer weights in FP8."}),
                "fp8_data_type": (list(FP8_DATA_TYPES), {"default": "e4m3fn", "tooltip": 'do not use "e5m2" with fp8_extreme'}),
            }
        }  # fmt: skip

    RETURN_TYPES = ("RUYI_MODEL",)
    RETURN_NAMES = ("ruyi_model",)
    FUNCTION = "load_model"
    CATEGORY = CATEGORY

    def load_model(self, model, auto_download="yes", auto_update="yes", offload="model", fp8_quant_mode="bf16", fp8_data_type="e4m3fn"):
        if offload not in OFFLOADS:
            raise ValueError(f"offload={offload!r} is not one of {', '.join(OFFLOADS)}")
        if fp8_quant_mode not in PRECISIONS:
            raise ValueError(f"fp8_quant_mode={fp8_quant_mode!r} is not one of {', '.join(PRECISIONS)}")
        if fp8_data_type not in FP8_DATA_TYPES:
            raise ValueError(f"fp8_data_type={fp8_data_type!r} is not one of {', '.join(FP8_DATA_TYPES)}")
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
                    raise FileNotFoundError(f"[Ruyi] downloading {repo_id} failed ({type(err).__name__}: {err}); {_hint(repo_id, path)}") from None
                log.warning("[Ruyi] update check for %s failed (%s); using the local copy", repo_id, err)
        if not (path / "transformer").is_dir():
            hint = _hint(repo_id, path)
            raise FileNotFoundError(f"[Ruyi] {model} not found at {path}; {hint}" + ("" if auto_download == "yes" else ", or set auto_download to yes"))
        return (RuyiModel(path=path, offload=offload, precision=fp8_quant_mode, fp8_data_type=fp8_data_type),)


def _hint(repo_id: str, path: Path) -> str:
    return f"download it with `huggingface-cli download {repo_id} --local-dir {path}`"


class Ruyi_LoadLora:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "ruyi_model": ("RUYI_MODEL",),
                "lora_name": (_folder_paths().get_filename_list("loras"),),
                "strength_model": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}),
            }
        }

    RETURN_TYPES = ("RUYI_MODEL",)
    RETURN_NAMES = ("ruyi_model",)
    FUNCTION = "load_lora"
    CATEGORY = CATEGORY

    def load_lora(self, ruyi_model: RuyiModel, lora_name: str, strength_model: float):
        from ruyi.plugins import LoRAWeights

        if not lora_name or strength_model == 0:
            return (ruyi_model,)
        path = _folder_paths().get_full_path("loras", lora_name)
        if path is None:
            raise FileNotFoundError(f"[Ruyi] LoRA {lora_name!r} not found in the loras folder")
        return (ruyi_model.with_lora(LoRAWeights(path=path, strength=float(strength_model))),)


class Ruyi_TeaCache:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "ruyi_model": ("RUYI_MODEL",),
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
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "ruyi_model": ("RUYI_MODEL",),
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
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "ruyi_model": ("RUYI_MODEL",),
                "video_length": ("INT", {"default": 72, "min": 8, "max": 120, "step": 8}),
                "base_resolution": ("INT", {"default": 512, "min": 384, "max": 1024, "step": 16}),
                "seed": ("INT", {"default": 42, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
                "steps": ("INT", {"default": 25, "min": 1, "max": 200, "step": 1}),
                "cfg": ("FLOAT", {"default": 7.0, "min": 1.0, "max": 20.0, "step": 0.01}),
                "scheduler": (list(SCHEDULERS), {"default": "DDIM"}),
                "motion": (list(MOTIONS), {"default": "2"}),
                "camera_direction": (list(CAMERAS), {"default": "static"}),
                "GPU_memory_mode": (list(GPU_MEMORY_MODES), {"default": "from_model",
                                    "tooltip": "from_model: the Load Model offload; normal_mode: model offload; low_memory_mode: sequential offload."}),
                "GPU_offload_steps": (list(GPU_OFFLOAD_STEPS), {"default": "0",
                                      "tooltip": "Park long-skip activations on the CPU for n steps (saves GPU memory)."}),
                "start_img": ("IMAGE",),
            },
            "optional": {
                "end_img": ("IMAGE",),
                "video_height": ("INT", {"default": 0, "min": 0, "max": 2048, "step": 16,
                                         "tooltip": "0: from base_resolution and the start image's aspect ratio."}),
                "video_width": ("INT", {"default": 0, "min": 0, "max": 2048, "step": 16,
                                        "tooltip": "0: from base_resolution and the start image's aspect ratio."}),
            },
        }  # fmt: skip

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    FUNCTION = "process"
    CATEGORY = CATEGORY

    def process(
        self, ruyi_model: RuyiModel, video_length, base_resolution, seed, steps, cfg, scheduler, motion,
        camera_direction, GPU_memory_mode, GPU_offload_steps, start_img, end_img=None, video_height=0, video_width=0,
    ):  # fmt: skip
        from ruyi.assembly import PipelineSpec
        from ruyi.pipeline import check_frames
        from ruyi.samplers.schedulers import sampler_by_label

        if not isinstance(ruyi_model, RuyiModel):
            raise TypeError(f"ruyi_model must come from a Ruyi Load Model node, got {type(ruyi_model).__name__}")
        check_frames(int(video_length))
        if GPU_memory_mode not in GPU_MEMORY_MODES:
            raise ValueError(f"GPU_memory_mode={GPU_memory_mode!r} is not one of {', '.join(GPU_MEMORY_MODES)}")
        offload = MEMORY_MODE_OFFLOAD.get(GPU_memory_mode, ruyi_model.offload)
        if bool(video_height) != bool(video_width):
            raise ValueError("set both video_height and video_width, or neither (0 = from base_resolution)")
        video_size = [int(video_height), int(video_width)] if video_height else None
        sampler = sampler_by_label(scheduler).registry_name
        start = image_to_array(start_img)
        end = image_to_array(end_img) if end_img is not None else None
        settings = dict(offload=offload, skip_steps=int(GPU_offload_steps), device=_device(), sampler=sampler)
        # the whole combination (hooks included) is checked before any weight loads
        PipelineSpec.from_names(ruyi_model.path, plugins=ruyi_model.hooks, **_spec_options(ruyi_model, **settings)).validate()
        pipe = get_pipeline(ruyi_model, **settings)
        attached = []
        try:
            for hook in ruyi_model.hooks:
                hook.attach(pipe)
                attached.append(hook)
            video = pipe(
                start, end, frames=int(video_length), base_resolution=int(base_resolution), video_size=video_size,
                steps=int(steps), cfg=float(cfg), seed=int(seed) % 2**63, camera=camera_direction, motion=motion,
                callbacks=[ComfyStepCallback(int(steps))], progress=False,
            )  # fmt: skip
        finally:
            for hook in reversed(attached):
                hook.detach(pipe)
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
