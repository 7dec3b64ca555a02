"""The ComfyUI nodes without ComfyUI: what a real ComfyUI run (tests/comfyui_real) cannot show.

- the node package imports with no ComfyUI at all;
- the original project's saved widget layouts map onto these nodes' widgets and values;
- internal state: the pipeline cache rebuilds for another sampler instead of swapping it, and
  plugin hooks come off the pipeline after an interrupted run;
- the UI workflow files (VideoHelperSuite extras included, which a stock ComfyUI cannot load) are
  consistent with the nodes' declarations.
Stand-ins for ``folder_paths`` / ``comfy.*`` are used only for that.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from tests.comfyui_real.original_layouts import ORIGINAL_WORKFLOWS, widget_inputs

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / "comfyui" / "workflows"
UI_WORKFLOWS = sorted(p for p in WORKFLOWS.rglob("*.json") if not p.name.endswith("-api.json"))

# nodes of ComfyUI core / VideoHelperSuite the workflow files use: input names and output types
EXTERNAL_NODES = {
    "LoadImage": {"inputs": {"image"}, "outputs": ["IMAGE", "MASK"]},
    "CreateVideo": {"inputs": {"images", "audio", "fps"}, "outputs": ["VIDEO"]},
    "SaveVideo": {"inputs": {"video", "filename_prefix", "format", "codec"}, "outputs": []},
    "VHS_VideoCombine": {
        "inputs": {"images", "audio", "meta_batch", "vae", "frame_rate", "loop_count", "filename_prefix", "format",
                   "pix_fmt", "crf", "save_metadata", "pingpong", "save_output"},
        "outputs": ["VHS_FILENAMES"],
    },
}  # fmt: skip


class FakeProgressBar:
    instances: list[FakeProgressBar] = []

    def __init__(self, total):
        self.total, self.current = total, 0
        FakeProgressBar.instances.append(self)

    def update(self, value):
        self.current += value


class Interrupted(Exception):
    pass


def fake_folder_paths(models: Path) -> types.ModuleType:
    module = types.ModuleType("folder_paths")
    module.models_dir = str(models)
    module.get_folder_paths = lambda name: [str(models / name)]
    module.get_filename_list = lambda name: sorted(p.name for p in (models / name).iterdir()) if (models / name).is_dir() else []
    module.get_full_path = lambda name, file: str(models / name / file) if (models / name / file).is_file() else None
    return module


@pytest.fixture
def nodes(monkeypatch, tmp_path):
    """``comfyui.nodes`` with a stand-in ``folder_paths`` over an empty models folder."""
    monkeypatch.setitem(sys.modules, "folder_paths", fake_folder_paths(tmp_path))
    import comfyui.nodes

    return comfyui.nodes


@pytest.fixture
def comfy(monkeypatch, tmp_path, fixture_dir):
    """Stand-in ``folder_paths`` / ``comfy.utils`` / ``comfy.model_management``; models/Ruyi/Ruyi-Mini-7B -> the tiny fixture."""
    models = tmp_path / "models"
    (models / "Ruyi").mkdir(parents=True)
    (models / "Ruyi" / "Ruyi-Mini-7B").symlink_to(fixture_dir, target_is_directory=True)
    state = types.SimpleNamespace(interrupt_at=None, checks=0)
    mm = types.ModuleType("comfy.model_management")
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.soft_empty_cache = lambda: None

    def throw_exception_if_processing_interrupted():
        state.checks += 1
        if state.interrupt_at is not None and state.checks > state.interrupt_at:
            raise Interrupted()

    mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    utils = types.ModuleType("comfy.utils")
    utils.ProgressBar = FakeProgressBar
    comfy_pkg = types.ModuleType("comfy")
    comfy_pkg.utils, comfy_pkg.model_management = utils, mm
    fakes = {"folder_paths": fake_folder_paths(models), "comfy": comfy_pkg, "comfy.utils": utils, "comfy.model_management": mm}
    for name, module in fakes.items():
        monkeypatch.setitem(sys.modules, name, module)
    FakeProgressBar.instances.clear()
    import comfyui.nodes

    yield types.SimpleNamespace(nodes=comfyui.nodes, state=state, models=models)
    comfyui.nodes.clear_pipeline_cache()


def comfy_image(height: int, width: int, seed: int) -> torch.Tensor:
    """A ComfyUI IMAGE: [1, H, W, 3] float in [0, 1]."""
    return torch.rand(1, height, width, 3, generator=torch.Generator().manual_seed(seed))


def sampler_kwargs(**overrides):
    kwargs = dict(video_length=8, base_resolution=384, seed=1, steps=2, cfg=7.0, scheduler="DDIM", motion="1",
                  camera_direction="static", GPU_memory_mode="from_model", GPU_offload_steps="0",
                  start_img=comfy_image(32, 32, 1), video_height=64, video_width=64)  # fmt: skip
    return {**kwargs, **overrides}


# -- without ComfyUI ---------------------------------------------------------------------------------
def test_import_without_comfyui():
    """The node package imports with no ComfyUI modules anywhere (the framework stays usable alone)."""
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('folder_paths', 'comfy'): raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import comfyui\n"
        "assert set(comfyui.NODE_CLASS_MAPPINGS) == set(comfyui.NODE_DISPLAY_NAME_MAPPINGS)\n"
        "print(sorted(comfyui.NODE_CLASS_MAPPINGS))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Ruyi_I2VSampler" in result.stdout


def test_frames_to_comfy_layout(nodes):
    video = torch.rand(1, 3, 8, 16, 24)
    images = nodes.video_to_images(video)
    assert images.shape == (8, 16, 24, 3) and torch.equal(images[2, 5, 7], video[0, :, 2, 5, 7])
    array = nodes.image_to_array(torch.rand(2, 10, 12, 4))
    assert array.shape == (10, 12, 3) and array.dtype.name == "uint8"


def test_original_spellings_map_to_registry_names():
    from comfyui import choices

    assert [choices.precision_name(v) for v in ("none", "lite", "strong", "extreme", "fp8_lite")] == [
        "bf16", "fp8_lite", "fp8_strong", "fp8_extreme", "fp8_lite"]  # fmt: skip
    assert [choices.fp8_type_name(v) for v in ("auto", "fp8_e4m3fn", "fp8_e5m2", "e5m2")] == ["e4m3fn", "e4m3fn", "e5m2", "e5m2"]
    assert [choices.sampler_name(v) for v in ("Euler", "Euler A", "DPM++", "PNDM", "DDIM", "euler_a")] == [
        "euler", "euler_a", "dpmpp", "pndm", "ddim", "euler_a"]  # fmt: skip
    assert choices.offload_name("normal_mode", "none") == "model"
    assert choices.offload_name("low_memory_mode", "none") == "sequential"
    assert choices.offload_name("from_model", "group") == "group"
    from ruyi.errors import ConfigError

    with pytest.raises(ConfigError, match="fp8_quant_mode='fp16' is not one of"):
        choices.precision_name("fp16")
    assert "scheduler='LMS' is not one of" in choices.validation_message((choices.sampler_name, "LMS"))


@pytest.mark.parametrize("name", sorted(ORIGINAL_WORKFLOWS))
def test_original_widget_layout_fits_the_nodes(nodes, name):
    """The original's saved widget values, mapped by position as ComfyUI's frontend does, name
    inputs these nodes declare, with values their dropdowns or VALIDATE_INPUTS accept."""
    for class_type, values in ORIGINAL_WORKFLOWS[name].items():
        if class_type not in nodes.NODE_CLASS_MAPPINGS:
            continue
        cls = nodes.NODE_CLASS_MAPPINGS[class_type]
        spec = cls.INPUT_TYPES()
        declared = {**spec["required"], **spec.get("optional", {})}
        widgets = [(n, e) for n, e in declared.items() if isinstance(e[0], list) or e[0] in ("INT", "FLOAT", "BOOLEAN", "STRING")]
        inputs = widget_inputs(widgets, values)
        # widgets the saved file has no value for (added later) show their defaults
        inputs |= {n: e[1].get("default", e[0][0] if isinstance(e[0], list) else None) for n, e in widgets if n not in inputs}
        checked = set()
        if hasattr(cls, "VALIDATE_INPUTS"):
            args = cls.VALIDATE_INPUTS.__code__.co_varnames[1 : cls.VALIDATE_INPUTS.__code__.co_argcount]
            assert cls.VALIDATE_INPUTS(**{a: inputs[a] for a in args}) is True, (class_type, inputs)
            checked = set(args)
        for input_name, value in inputs.items():
            kind, options = declared[input_name][0], declared[input_name][1] if len(declared[input_name]) > 1 else {}
            if isinstance(kind, list) and input_name not in checked:
                assert value in kind, f"{class_type}.{input_name}={value!r} is not one of {kind}"
            if kind in ("INT", "FLOAT"):
                assert options.get("min", value) <= value <= options.get("max", value), (input_name, value)


# -- internal state a real run does not expose ----------------------------------------------------------
def test_another_sampler_rebuilds_instead_of_swapping(comfy):
    nodes = comfy.nodes
    (model,) = nodes.Ruyi_LoadModel().load_model("Ruyi-Mini-7B", "no", "no", "none", "auto", "none")
    assert (model.precision, model.fp8_data_type, model.offload) == ("bf16", "e4m3fn", "none")
    nodes.Ruyi_I2VSampler().process(model, **sampler_kwargs(scheduler="DDIM"))
    first = nodes._PIPELINE["pipe"]
    first_sampler = first.sampler
    nodes.Ruyi_I2VSampler().process(model, **sampler_kwargs(scheduler="Euler A"))
    second = nodes._PIPELINE["pipe"]
    assert second is not first and first.sampler is first_sampler  # the built pipeline was not edited
    assert (type(first.sampler).label, type(second.sampler).label) == ("DDIM", "Euler A")
    assert FakeProgressBar.instances[-1].current == 2  # one update per denoising step


def test_interrupt_detaches_plugins(comfy):
    nodes = comfy.nodes
    (model,) = nodes.Ruyi_LoadModel().load_model("Ruyi-Mini-7B", "no", "no", "bf16", "e4m3fn", "none")
    (model,) = nodes.Ruyi_TeaCache().tea_cache(model, True, 0.1, 1, 1, False)
    (model,) = nodes.Ruyi_EnhanceAVideo().enhance_a_video(model, True, 1.0, 0, 0)
    comfy.state.interrupt_at = 1  # the second step's check raises
    with pytest.raises(Interrupted):
        nodes.Ruyi_I2VSampler().process(model, **sampler_kwargs(steps=3, cfg=1.0))
    assert FakeProgressBar.instances[-1].current == 1
    pipe = nodes._PIPELINE["pipe"]
    hooks = {n for m in pipe.transformer.modules() for n in getattr(getattr(m, "_diffusers_hook", None), "hooks", {})}
    assert pipe.callbacks == [] and not {"ruyi.teacache", "ruyi.enhance_a_video"} & hooks


def test_missing_model_names_the_download(comfy):
    from ruyi.errors import MissingWeightsError

    with pytest.raises(MissingWeightsError, match="huggingface-cli download IamCreateAI/Ruyi-Other .*set auto_download to yes"):
        comfy.nodes.Ruyi_LoadModel().load_model("Ruyi-Other", "no", "no", "bf16", "e4m3fn", "model")
    assert "Ruyi-Mini-7B" in comfy.nodes.Ruyi_LoadModel.INPUT_TYPES()["required"]["model"][0]


# -- the UI workflow files ---------------------------------------------------------------------------
def declared(nodes, class_type):
    """(input names, [(widget name, spec)] in order, output types, spec) of a node type."""
    if class_type in nodes.NODE_CLASS_MAPPINGS:
        cls = nodes.NODE_CLASS_MAPPINGS[class_type]
        spec = cls.INPUT_TYPES()
        entries = [*spec["required"].items(), *spec.get("optional", {}).items()]
        widgets = [(n, e) for n, e in entries if isinstance(e[0], list) or e[0] in ("INT", "FLOAT", "BOOLEAN", "STRING")]
        return {n for n, _ in entries}, widgets, list(cls.RETURN_TYPES), spec
    assert class_type in EXTERNAL_NODES, f"workflow references an undeclared node type {class_type!r}"
    return EXTERNAL_NODES[class_type]["inputs"], None, EXTERNAL_NODES[class_type]["outputs"], None


@pytest.mark.parametrize("workflow", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_ui_workflow_matches_node_declarations(nodes, workflow):
    data = json.loads(workflow.read_text())
    by_id = {n["id"]: n for n in data["nodes"]}
    assert {"Ruyi_LoadModel", "Ruyi_I2VSampler"} <= {n["type"] for n in data["nodes"]}
    for node in data["nodes"]:
        names, widgets, outputs, spec = declared(nodes, node["type"])
        for slot in node.get("inputs", []):
            assert slot["name"] in names, f"{node['type']} has no input {slot['name']!r}"
        assert [o["type"] for o in node.get("outputs", [])] == outputs
        if spec is not None:
            inputs = widget_inputs(widgets, node["widgets_values"])
            assert len(inputs) == len(widgets), f"{node['type']}: {len(widgets)} widgets, values {node['widgets_values']}"
            for name, entry in widgets:
                if isinstance(entry[0], list):
                    assert inputs[name] in entry[0], f"{node['type']}.{name}={inputs[name]!r} is not one of {entry[0]}"
    for link_id, src, src_slot, dst, dst_slot, typ in data["links"]:
        assert by_id[src]["outputs"][src_slot]["type"] == typ
        assert by_id[dst]["inputs"][dst_slot]["link"] == link_id and by_id[dst]["inputs"][dst_slot]["type"] == typ
