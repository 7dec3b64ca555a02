"""Blocks streamed from CPU RAM in groups, prefetched on a side CUDA stream (diffusers' hooks).

Between ``model`` (whole models in and out) and ``sequential`` (every leaf, synchronously): with
``use_stream`` the next group's weights are copied from pinned memory while the current group
computes, so transfers hide behind compute.

Host RAM (what a 16 GB PC has): diffusers keeps a pinned copy of every streamed weight; a weight
already pinned is taken as it is. So when the hooks will copy from pinned memory the transformer is
loaded straight into it (``weights_home``, :mod:`ruyi.models.in_place`), one tensor at a time: one
host copy of the 7B's 13.4 GiB, where ``from_pretrained`` (its tensors map the checkpoint file, whose
pages every first read brings in) then a pinned copy held two. ``low_cpu_mem_usage=true`` keeps the
weights unpinned, as ``from_pretrained`` maps them (pinned on the fly per transfer: slower, but the
operating system can drop mapped pages and page-locked memory is what a PC runs short of); so does
``use_stream=false``. ``disk=true`` writes each group once to a folder of its own and
reads it back per use, so the weights leave RAM altogether (the operating system's file cache still
helps when RAM is free); the transformer's group files are written straight from the checkpoint, one
group in memory at a time (:mod:`ruyi.placement.group_files`). That folder is made fresh for the run
(never a stale group file of another model) and removed with the placement, at exit, or when
loading fails. The VAE and the image encoder (small) load through ``from_pretrained``, and are pinned
beside their loaded copy.

Loading straight into place is skipped where an extension that attaches before the placement changes
the weights' values (``changes_weights``: a merged LoRA, torchao FP8): the transformer then comes
from ``from_pretrained`` and the placement works from what those extensions leave. FP8 storage
(``precision=fp8_*``) is applied as the weights are read (``stored_as``), unpinned too: the kept,
pinned or written bytes are the FP8 ones, and no full copy in the pipeline's dtype is made first.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers.hooks import apply_group_offloading

from ruyi.errors import ConfigError
from ruyi.models.in_place import GroupFile, WeightsHome
from ruyi.placement.base import AcceleratorRequired, HostCopies, Offloadable, OffloadStrategy, offload_units
from ruyi.placement.group_files import block_group_files, check_group_files, file_groups, unit_folder
from ruyi.registry import OFFLOADS

STREAMED_IN_PLACE = ("transformer",)  # the models loaded straight into place (the others are small)


@OFFLOADS.register("group")
class GroupOffload(OffloadStrategy):
    loads_per_block = True

    def __init__(
        self, *, blocks_per_group: int = 1, use_stream: bool = True, record_stream: bool = True,
        low_cpu_mem_usage: bool = False, disk: bool = False, disk_dir: str | None = None,
    ) -> None:  # fmt: skip
        if blocks_per_group < 1:
            raise ConfigError(f"offload.blocks_per_group={blocks_per_group} must be >= 1")
        for key, value in (("low_cpu_mem_usage", low_cpu_mem_usage), ("disk", disk)):
            if not isinstance(value, bool):
                raise ConfigError(f"offload.{key}={value!r} must be true or false")
        self.blocks_per_group = blocks_per_group
        self.use_stream = use_stream
        self.record_stream = record_stream
        self.low_cpu_mem_usage = low_cpu_mem_usage
        self.disk = disk
        self.disk_dir = disk_dir  # where the run's own folder goes (None: ruyi's cache folder)
        self._folder: Path | None = None
        self._written: dict[int, list[GroupFile]] = {}  # id(model) -> its group files written from the checkpoint

    def __repr__(self) -> str:
        extra = ", low_cpu_mem_usage=True" if self.low_cpu_mem_usage else ""
        extra += f", disk={self._folder or True}" if self.disk else ""
        return f"GroupOffload(blocks_per_group={self.blocks_per_group}, use_stream={self.use_stream}{extra})"

    def host_copies(self, plan) -> HostCopies:
        """Copies of the weights kept in host RAM under ``plan`` (read by memory=auto's host plan):
        the transformer once (loaded straight into place, or mapped by ``from_pretrained`` and never
        pinned), none on disk; when an extension changes its weights, it is kept plus the pinned copy
        the hooks make when they stream. The VAE and image encoder always load plainly."""
        pinned_copy = 1.0 if self.use_stream and not self.low_cpu_mem_usage else 0.0
        others = 0.0 if self.disk else 1.0 + pinned_copy
        if plan.has("changes_weights"):
            return HostCopies(transformer=others, others=others, in_place=False)
        return HostCopies(transformer=0.0 if self.disk else 1.0, others=others, in_place=True)

    def weights_home(self, kind: str, plan) -> WeightsHome | None:
        """Where ``kind``'s weights go as they are read (module docstring); None: ``from_pretrained``."""
        if kind not in STREAMED_IN_PLACE or plan.has("changes_weights"):  # those change the loaded values
            return None
        stored_as = getattr(plan.precision, "stored_as", None)
        if self.disk:
            self._folder = self._make_folder()
            return WeightsHome(group_files=self._group_files, stored_as=stored_as, discard=self._discard_folder)
        pin = self.use_stream and not self.low_cpu_mem_usage and plan.device.type == "cuda" and torch.cuda.is_available()
        if pin or not getattr(plan.precision, "plain_weights", False):
            return WeightsHome(pin=pin, stored_as=stored_as)
        # unpinned and unconverted: from_pretrained's tensors are views of the mapped checkpoint, file
        # pages the operating system can drop and read again, where a copy in plain memory could not be
        return None

    def _group_files(self, model: torch.nn.Module) -> list[GroupFile] | None:
        # diffusers streams one block per group when it prefetches on a stream
        per_group = 1 if self.use_stream else self.blocks_per_group
        files = block_group_files(model, self._folder, per_group)
        if files is not None:
            self._written[id(model)] = files
        return files

    def check(self, plan) -> None:
        super().check(plan)
        if self.disk and self.disk_dir is not None and not Path(self.disk_dir).expanduser().is_dir():
            raise ConfigError(f"offload.disk_dir={self.disk_dir} is not an existing folder; create it or leave it null")

    @property
    def needs_accelerator(self) -> bool:
        return self.use_stream

    def accelerator_hint(self, device: torch.device) -> str:
        return (
            f"offload=group with use_stream=true prefetches on a CUDA stream, but the device is {device}; "
            "run on a GPU or set offload.use_stream=false"
        )

    def apply(self, pipe: Offloadable) -> None:
        device = pipe.execution_device
        if self.needs_accelerator and device.type != "cuda":
            raise AcceleratorRequired(self.accelerator_hint(device))
        if self.disk and self._folder is None:  # else made when the transformer was written from the checkpoint
            self._folder = self._make_folder()
        for model in pipe.modules.values():
            model.to("cpu")
            for index, unit in enumerate(offload_units(model)):
                self._attach(unit, device, folder=None if self._folder is None else self._folder / unit_folder(model, index))
            if id(model) in self._written:
                check_group_files(model, self._written.pop(id(model)))

    def _make_folder(self) -> Path:
        from ruyi.compile_cache import ruyi_cache_root

        parent = Path(self.disk_dir).expanduser() if self.disk_dir else ruyi_cache_root() / "offload"
        parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="run-", dir=parent))  # this run's own: removed with it
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        return folder

    def _discard_folder(self) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
        self._written = {}

    def _attach(self, unit: torch.nn.Module, device: torch.device, *, folder: Path | None) -> None:
        # block-level groups need a ModuleList/Sequential child to stream; a plain layer is one group
        blocks = any(isinstance(c, (torch.nn.ModuleList, torch.nn.Sequential)) for c in unit.children())
        apply_group_offloading(
            unit,
            onload_device=device,
            offload_type="block_level" if blocks else "leaf_level",
            num_blocks_per_group=self.blocks_per_group if blocks else None,
            use_stream=self.use_stream,
            record_stream=self.record_stream and self.use_stream,
            non_blocking=self.use_stream,
            low_cpu_mem_usage=self.low_cpu_mem_usage,
            offload_to_disk_path=None if folder is None else str(folder),
        )

    def remove(self, pipe: Offloadable) -> None:
        from diffusers.hooks import HookRegistry

        if self._folder is not None:
            _read_back_from_disk(pipe)
        for module in pipe.modules.values():
            for sub in module.modules():
                registry = getattr(sub, "_diffusers_hook", None)
                if isinstance(registry, HookRegistry):
                    for name in [n for n in registry.hooks if _is_group_offloading(n)]:  # not the others' hooks
                        registry.remove_hook(name, recurse=False)
        super().remove(pipe)
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


def _read_back_from_disk(pipe: Offloadable) -> None:
    """Weights written to disk by the group hooks back into the modules (CPU), before the folder goes."""
    from safetensors.torch import load_file

    for module in pipe.modules.values():
        for group in file_groups(module):
            if Path(group.safetensors_file_path).is_file():
                stored = load_file(group.safetensors_file_path, device="cpu")
                for key, tensor in group.key_to_tensor.items():
                    tensor.data = stored[key]


def _is_group_offloading(hook_name: str) -> bool:
    """diffusers names its group-offloading hooks (the group hook, lazy prefetch, layer tracker) so."""
    return "group_offloading" in hook_name or "layer_execution_tracker" in hook_name
