"""Weights loaded straight into their final place (``ruyi.models.in_place``) for ``offload=group``:
the same model as ``from_pretrained``, group files named as diffusers names them, nothing left behind
when loading fails, and the host plan that follows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ruyi.assembly import load_pipeline
from ruyi.models.in_place import WeightsHome, load_in_place
from ruyi.models.loading import load_model
from ruyi.models.transformer import RuyiTransformer3D
from ruyi.registry import OFFLOADS, PRECISIONS

PANS = Path(__file__).resolve().parents[1] / "ruyi" / "assets" / "ruyi-tiny-pans"
GIB = 1024**3


def _same_model(mine: torch.nn.Module, theirs: torch.nn.Module) -> None:
    ours, reference = mine.state_dict(), theirs.state_dict()
    assert list(ours) == list(reference)
    for name, tensor in reference.items():
        assert ours[name].dtype == tensor.dtype and torch.equal(ours[name], tensor), name
    buffers = dict(mine.named_buffers())
    for name, buffer in theirs.named_buffers():  # the non-persistent ones too (made in __init__)
        assert buffers[name].dtype == buffer.dtype and torch.equal(buffers[name], buffer), name
    assert dict(mine.config) == dict(theirs.config)
    assert not mine.training and not any(p.requires_grad for p in mine.parameters())


@pytest.fixture(params=["fixture", "pans"])
def checkpoint(request, fixture_dir):  # an fp32 checkpoint (the parity fixture) and a bf16 one
    return fixture_dir if request.param == "fixture" else PANS


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, None], ids=["fp32", "bf16", "as_stored"])
def test_in_place_equals_from_pretrained(checkpoint, dtype):
    _same_model(load_in_place(RuyiTransformer3D, checkpoint, dtype=dtype, home=WeightsHome()),
                load_model(RuyiTransformer3D, checkpoint, dtype=dtype))  # fmt: skip


@pytest.mark.parametrize("mode", ["fp8_lite", "fp8_extreme"])
def test_fp8_storage_as_read_equals_converting_after(checkpoint, mode):
    precision = PRECISIONS.get(mode)()
    reference = load_model(RuyiTransformer3D, checkpoint, dtype=torch.bfloat16)
    precision.convert(reference, torch.bfloat16)
    mine = load_in_place(RuyiTransformer3D, checkpoint, dtype=torch.bfloat16, home=WeightsHome(stored_as=precision.stored_as))
    fp8 = {n: p.data_ptr() for n, p in mine.named_parameters() if p.dtype == torch.float8_e4m3fn}
    assert fp8, "nothing was stored in FP8 as read"
    precision.convert(mine, torch.bfloat16)  # what the precision stage does next: no copy of those
    assert {n: p.data_ptr() for n, p in mine.named_parameters() if n in fp8} == fp8
    _same_model(mine, reference)


@pytest.mark.parametrize("per_group", [1, 3])
def test_group_files_are_named_as_diffusers_names_them(fixture_dir, tmp_path, per_group):
    """Pins diffusers' private naming (``group_<sha256[:16]>.safetensors``, ``tensor_<i>`` keys in the
    group's order): when it changes, this fails, and offload.disk would refuse to run."""
    from types import SimpleNamespace

    from ruyi.placement.group_files import attached_group_files, block_group_files

    model = load_model(RuyiTransformer3D, fixture_dir)
    named = block_group_files(model, tmp_path / "run", per_group)
    placement = OFFLOADS.get("group")(use_stream=False, blocks_per_group=per_group, disk=True, disk_dir=str(tmp_path))
    placement.apply(SimpleNamespace(execution_device=torch.device("cpu"), modules={"transformer": model}))
    run = placement._folder
    expected = {str(f.path).replace(str(tmp_path / "run"), str(run)): dict(f.entries) for f in named}
    assert attached_group_files(model) == expected
    placement.remove(SimpleNamespace(execution_device=torch.device("cpu"), modules={"transformer": model}))


def test_written_group_files_hold_what_diffusers_would_write(fixture_dir, tmp_path):
    from safetensors.torch import load_file

    def group_files(folder):
        folder.mkdir()
        pipe = load_pipeline(fixture_dir, offload="group",
                             offload_kwargs=dict(use_stream=False, disk=True, disk_dir=str(folder)))  # fmt: skip
        (run,) = folder.iterdir()
        return pipe, {p.relative_to(run): load_file(p) for p in run.rglob("*.safetensors")}

    pipe, ours = group_files(tmp_path / "ours")
    assert pipe.transformer.blocks[0].attn1.to_q.weight.untyped_storage().nbytes() > 0
    mine = {k: v for k, v in ours.items() if k.parts[0].startswith("RuyiTransformer3D")}
    assert len(mine) > 2
    # the same model through from_pretrained: diffusers writes every file from memory
    model = load_model(RuyiTransformer3D, fixture_dir)
    from types import SimpleNamespace

    placement = OFFLOADS.get("group")(use_stream=False, disk=True, disk_dir=str(tmp_path))
    theirs_dir = tmp_path / "theirs"
    theirs_dir.mkdir()
    placement.disk_dir = str(theirs_dir)
    placement.apply(SimpleNamespace(execution_device=torch.device("cpu"), modules={"transformer": model}))
    theirs = {p.relative_to(placement._folder): load_file(p) for p in placement._folder.rglob("*.safetensors")}
    assert set(theirs) == set(mine)
    for path, tensors in theirs.items():
        assert set(tensors) == set(mine[path])
        for key, tensor in tensors.items():
            assert tensor.dtype == mine[path][key].dtype and torch.equal(tensor, mine[path][key]), (path, key)


def test_a_mismatch_with_diffusers_names_stops_the_run(fixture_dir, tmp_path):
    from ruyi.models.in_place import GroupFile
    from ruyi.placement.group_files import block_group_files, check_group_files

    model = load_model(RuyiTransformer3D, fixture_dir)
    named = block_group_files(model, tmp_path, 1)
    check_group_files(model, [])  # no hooks attached, nothing written: agree
    renamed = [GroupFile(f.path.with_name("group_0000000000000000.safetensors"), f.entries) for f in named]
    from types import SimpleNamespace

    placement = OFFLOADS.get("group")(use_stream=False)
    placement.apply(SimpleNamespace(execution_device=torch.device("cpu"), modules={"transformer": model}))
    check_group_files(model, [])  # in memory: no files at all
    with pytest.raises(RuntimeError, match="names or orders its group-offload files differently"):
        check_group_files(model, renamed)


def test_the_transformer_is_not_loaded_through_from_pretrained(fixture_dir, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("from_pretrained read the streamed transformer")

    monkeypatch.setattr(RuyiTransformer3D, "from_pretrained", classmethod(refuse))
    load_pipeline(fixture_dir, offload="group", offload_kwargs={"use_stream": False, "disk": True, "disk_dir": str(tmp_path)})
    load_pipeline(fixture_dir, offload="group", offload_kwargs={"use_stream": False}, precision="fp8_lite")
    for plain in ({}, {"offload": "group", "offload_kwargs": {"use_stream": False}}):
        with pytest.raises(AssertionError, match="from_pretrained"):
            load_pipeline(fixture_dir, **plain)  # unpinned in the pipeline dtype: the library's mapped tensors


def test_a_failed_load_leaves_no_group_files(fixture_dir, tmp_path, monkeypatch):
    from ruyi.models import in_place

    calls = {"n": 0}
    read = in_place._Reader.read

    def failing(self, name, into=None):
        calls["n"] += 1
        if calls["n"] > 40:  # several group files are written by then
            raise OSError("the disk went away")
        return read(self, name, into)

    monkeypatch.setattr(in_place._Reader, "read", failing)
    with pytest.raises(OSError, match="went away"):
        load_pipeline(fixture_dir, offload="group", offload_kwargs=dict(use_stream=False, disk=True, disk_dir=str(tmp_path)))
    assert calls["n"] > 40 and list(tmp_path.iterdir()) == []


def test_weights_home_follows_the_plan(fixture_dir, tmp_path):
    from ruyi.assembly import PipelineSpec

    def home(lora=False, **options):
        plugins = [("lora", {"path": str(_lora(tmp_path))})] if lora else []
        plan = PipelineSpec.from_names(fixture_dir, offload="group", offload_kwargs=options, plugins=plugins, device="cpu").validate()
        return plan.offload.weights_home("transformer", plan), plan

    plain, plan = home(use_stream=False)
    assert plain is None  # nothing pinned, nothing converted: from_pretrained maps the file
    assert plan.offload.weights_home("vae", plan) is None  # small: from_pretrained
    on_disk, plan = home(use_stream=False, disk=True, disk_dir=str(tmp_path))
    assert on_disk.group_files is not None and on_disk.discard is not None and not on_disk.pin
    on_disk.discard()
    assert not any(tmp_path.glob("run-*"))
    changed, _ = home(lora=True, use_stream=False, disk=True, disk_dir=str(tmp_path))
    assert changed is None  # a merged LoRA changes the values: from_pretrained, placed after


def _lora(folder: Path) -> Path:
    from safetensors.torch import save_file

    path = folder / "lora.safetensors"
    if not path.exists():
        model = load_model(RuyiTransformer3D, PANS)
        weight = model.blocks[0].attn1.to_q.weight
        save_file({"blocks.0.attn1.to_q.lora_A.weight": torch.zeros(2, weight.shape[1]),
                   "blocks.0.attn1.to_q.lora_B.weight": torch.zeros(weight.shape[0], 2)}, str(path))  # fmt: skip
    return path


@pytest.mark.gpu
def test_pinned_load_is_the_copy_the_hooks_stream_from(fixture_dir):
    from types import SimpleNamespace

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = load_in_place(RuyiTransformer3D, fixture_dir, dtype=torch.bfloat16, home=WeightsHome(pin=True))
    assert all(p.is_pinned() for p in model.parameters())
    where = {id(p): p.data_ptr() for p in model.parameters()}
    OFFLOADS.get("group")().apply(SimpleNamespace(execution_device=torch.device("cuda"), modules={"transformer": model}))
    kept = {}
    for sub in model.modules():
        registry = getattr(sub, "_diffusers_hook", None)
        for hook in (registry.hooks.values() if registry is not None else ()):
            kept.update({id(t): c.data_ptr() for t, c in getattr(getattr(hook, "group", None), "cpu_param_dict", {}).items()})
    assert kept and all(kept[i] == where[i] for i in kept)  # no second, pinned copy


def test_host_load_measure_removes_only_its_own_offload_folder(tmp_path):
    """benchmarks/host_load.py with offload.disk writes its group files into a folder it makes inside
    the checkpoint folder and removes that one only: the user's files beside it stay."""
    import shutil
    import sys

    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo))
    from benchmarks.host_load import measure

    root = tmp_path / "ckpt"
    shutil.copytree(repo / "ruyi" / "assets" / "ruyi-tiny-pans", root)
    (root / "offload").mkdir()
    sentinels = [root / "offload" / "keep.txt", root / "keep.txt"]
    for path in sentinels:
        path.write_text("mine")
    row = measure("in_place_disk", root, "float32")
    assert row["disk_gib"] > 0  # group files were written
    assert all(p.read_text() == "mine" for p in sentinels)
    assert not list(root.glob("offload-*"))  # its own folder is gone
