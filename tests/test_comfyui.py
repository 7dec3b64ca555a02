"""The ComfyUI nodes (comfyui/nodes.py) under stand-ins for ComfyUI's modules, and the example workflows."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / "comfyui" / "workflows"
API_WORKFLOWS = sorted(WORKFLOWS.glob("*-api.json"))
UI_WORKFLOWS = sorted(p for p in WORKFLOWS.glob("*.json") if not p.name.endswith("-api.json"))
WIDGET_TYPES = ("INT", "FLOAT", "BOOLEAN", "STRING")

# nodes of ComfyUI core / VideoHelperSuite the workflows use: their input names (links and widgets)
EXTERNAL_NODES = {
    "LoadImage": {"inputs": {"image"}, "widgets": ["image", "upload"], "outputs": ["IMAGE", "MASK"]},
    "VHS_VideoCombine": {
        "inputs": {"images", "audio", "meta_batch", "vae", "frame_rate", "loop_count", "filename_prefix", "format",
                   "pix_fmt", "crf", "save_metadata", "pingpong", "save_output"},
        "widgets": None,  # a dict of named values
        "outputs": ["VHS_FILENAMES"],
    },
}  # fmt: skip


def load_nodes_module():
    spec = importlib.util.spec_from_file_location("ruyi_comfyui_nodes_under_test", REPO / "comfyui" / "nodes.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as ComfyUI does; dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


class FakeProgressBar:
    instances: list[FakeProgressBar] = []

    def __init__(self, total):
        self.total, self.current = total, 0
        FakeProgressBar.instances.append(self)

    def update(self, value):
        self.current += value


class Interrupted(Exception):
    pass


@pytest.fixture
def comfy(monkeypatch, tmp_path, fixture_dir):
    """Fake ``folder_paths`` / ``comfy.utils`` / ``comfy.model_management``; models/Ruyi/Ruyi-Mini-7B -> the tiny fixture."""
    models = tmp_path / "models"
    (models / "Ruyi").mkdir(parents=True)
    (models / "Ruyi" / "Ruyi-Mini-7B").symlink_to(fixture_dir, target_is_directory=True)
    (models / "loras").mkdir()

    folder_paths = types.ModuleType("folder_paths")
    folder_paths.models_dir = str(models)
    folder_paths.get_folder_paths = lambda name: [str(models / name)]
    folder_paths.get_filename_list = lambda name: sorted(p.name for p in (models / name).iterdir())
    folder_paths.get_full_path = lambda name, file: str(models / name / file) if (models / name / file).is_file() else None

    state = types.SimpleNamespace(interrupt_at=None, checks=0)
    mm = types.ModuleType("comfy.model_management")
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.soft_empty_cache = lambda: None
    mm.InterruptProcessingException = Interrupted

    def throw_exception_if_processing_interrupted():
        state.checks += 1
        if state.interrupt_at is not None and state.checks > state.interrupt_at:
            raise Interrupted()

    mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    utils = types.ModuleType("comfy.utils")
    utils.ProgressBar = FakeProgressBar
    comfy_pkg = types.ModuleType("comfy")
    comfy_pkg.utils, comfy_pkg.model_management = utils, mm
    for name, module in {"folder_paths": folder_paths, "comfy": comfy_pkg, "comfy.utils": utils, "comfy.model_management": mm}.items():
        monkeypatch.setitem(sys.modules, name, module)
    FakeProgressBar.instances.clear()
    nodes = load_nodes_module()
    yield types.SimpleNamespace(nodes=nodes, state=state, models=models)
    nodes.clear_pipeline_cache()


def comfy_image(height: int, width: int, seed: int) -> torch.Tensor:
    """A ComfyUI IMAGE: [1, H, W, 3] float in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, height, width, 3, generator=g)


def run_api_workflow(nodes, graph: dict, overrides: dict[str, dict]) -> dict[str, tuple]:
    """Execute an API-format graph in dependency order through the nodes' declared FUNCTIONs."""
    outputs: dict[str, tuple] = {}
    captured = {}

    def external(class_type, inputs):
        if class_type == "LoadImage":
            return (comfy_image(48, 80, seed=len(inputs["image"])), torch.zeros(1, 48, 80))
        if class_type == "VHS_VideoCombine":
            captured["images"] = inputs["images"]
            return (["video.mp4"],)
        raise KeyError(class_type)

    def execute(node_id):
        if node_id in outputs:
            return outputs[node_id]
        node = graph[node_id]
        inputs = {}
        for name, value in {**node["inputs"], **overrides.get(node_id, {})}.items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                inputs[name] = execute(value[0])[value[1]]  # a link: ["node_id", output_index]
            else:
                inputs[name] = value
        if node["class_type"] in nodes.NODE_CLASS_MAPPINGS:
            cls = nodes.NODE_CLASS_MAPPINGS[node["class_type"]]
            result = getattr(cls(), cls.FUNCTION)(**inputs)
            assert isinstance(result, tuple) and len(result) == len(cls.RETURN_TYPES)
        else:
            result = external(node["class_type"], inputs)
        outputs[node_id] = result
        return result

    for node_id in graph:
        execute(node_id)
    outputs["captured"] = captured
    return outputs


def sampler_id(graph: dict) -> str:
    return next(k for k, v in graph.items() if v["class_type"] == "Ruyi_I2VSampler")


TINY = dict(video_length=8, steps=2, base_resolution=384, video_height=64, video_width=96)


@pytest.mark.parametrize("workflow", API_WORKFLOWS, ids=lambda p: p.stem)
def test_api_workflow_runs_node_by_node(comfy, workflow):
    graph = json.loads(workflow.read_text())
    outputs = run_api_workflow(comfy.nodes, graph, {sampler_id(graph): TINY})
    images = outputs["captured"]["images"]
    assert images.shape == (8, 64, 96, 3)  # ComfyUI IMAGE layout [F, H, W, 3]
    assert images.dtype == torch.float32 and 0 <= images.min() and images.max() <= 1
    assert torch.isfinite(images).all()
    bar = FakeProgressBar.instances[-1]
    assert (bar.total, bar.current) == (2, 2)  # one update per denoising step
    model = outputs[graph[sampler_id(graph)]["inputs"]["ruyi_model"][0]][0]
    pipe = comfy.nodes._PIPELINE["pipe"]
    assert pipe.callbacks == [] and pipe.transformer.blocks_runner is None  # hooks detached after the run
    if "end" in workflow.stem:
        assert "end_img" in graph[sampler_id(graph)]["inputs"]
    else:
        assert {type(h).__name__ for h in model.hooks} == {"TeaCache", "EnhanceAVideo"}


def test_base_resolution_bucket_and_seed_reproducible(comfy):
    nodes = comfy.nodes
    (model,) = nodes.Ruyi_LoadModel().load_model("Ruyi-Mini-7B", "no", "no", "none", "bf16", "e4m3fn")
    kwargs = dict(video_length=8, base_resolution=384, seed=3, steps=2, cfg=7.0, scheduler="Euler", motion="auto",
                  camera_direction="left", GPU_memory_mode="from_model", GPU_offload_steps="0",
                  start_img=comfy_image(40, 60, 0), video_height=64, video_width=64)  # fmt: skip
    (a,) = nodes.Ruyi_I2VSampler().process(model, **kwargs)
    (b,) = nodes.Ruyi_I2VSampler().process(model, **kwargs)
    assert a.shape == (8, 64, 64, 3) and torch.equal(a, b)


def test_interrupt_stops_cleanly(comfy):
    nodes = comfy.nodes
    (model,) = nodes.Ruyi_LoadModel().load_model("Ruyi-Mini-7B", "no", "no", "none", "bf16", "e4m3fn")
    (model,) = nodes.Ruyi_TeaCache().tea_cache(model, True, 0.1, 1, 1, False)
    comfy.state.interrupt_at = 1  # the second step's check raises
    with pytest.raises(Interrupted):
        nodes.Ruyi_I2VSampler().process(
            model, video_length=8, base_resolution=384, seed=1, steps=3, cfg=1.0, scheduler="DDIM", motion="1",
            camera_direction="static", GPU_memory_mode="from_model", GPU_offload_steps="0",
            start_img=comfy_image(32, 32, 1), video_height=64, video_width=64,
        )  # fmt: skip
    assert FakeProgressBar.instances[-1].current == 1
    pipe = nodes._PIPELINE["pipe"]
    assert pipe.callbacks == [] and pipe.transformer.blocks_runner is None


def test_lora_node_and_missing_model(comfy):
    from safetensors.torch import save_file

    nodes = comfy.nodes
    (model,) = nodes.Ruyi_LoadModel().load_model("Ruyi-Mini-7B", "no", "no", "model", "bf16", "e4m3fn")
    save_file({"x": torch.zeros(1)}, str(comfy.models / "loras" / "style.safetensors"))
    assert "style.safetensors" in nodes.Ruyi_LoadLora.INPUT_TYPES()["required"]["lora_name"][0]
    (with_lora,) = nodes.Ruyi_LoadLora().load_lora(model, "style.safetensors", 1.2)
    assert with_lora.loras[0].strength == 1.2 and model.loras == ()  # nodes never mutate their input
    with pytest.raises(FileNotFoundError, match="huggingface-cli download IamCreateAI/Ruyi-Other"):
        nodes.Ruyi_LoadModel().load_model("Ruyi-Other", "no", "no", "model", "bf16", "e4m3fn")
    assert "Ruyi-Mini-7B" in nodes.Ruyi_LoadModel.INPUT_TYPES()["required"]["model"][0]


def test_frames_to_comfy_layout():
    nodes = load_nodes_module()
    video = torch.rand(1, 3, 8, 16, 24)
    images = nodes.video_to_images(video)
    assert images.shape == (8, 16, 24, 3) and torch.equal(images[2, 5, 7], video[0, :, 2, 5, 7])
    rgba = torch.rand(2, 10, 12, 4)
    array = nodes.image_to_array(rgba)
    assert array.shape == (10, 12, 3) and array.dtype.name == "uint8"


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


# -- the workflow files ---------------------------------------------------------------------------------
def declared(nodes, class_type):
    """(all input names, widget names in UI order, output types) of a node type."""
    if class_type in nodes.NODE_CLASS_MAPPINGS:
        cls = nodes.NODE_CLASS_MAPPINGS[class_type]
        for attr in ("RETURN_TYPES", "FUNCTION", "CATEGORY"):
            assert hasattr(cls, attr), f"{class_type} lacks {attr}"
        assert cls.CATEGORY == "Ruyi" and callable(getattr(cls, cls.FUNCTION))
        spec = cls.INPUT_TYPES()
        names, widgets = set(), []
        for section in ("required", "optional"):
            for name, entry in spec.get(section, {}).items():
                names.add(name)
                if isinstance(entry[0], list) or entry[0] in WIDGET_TYPES:
                    widgets.append((name, entry))
        return names, widgets, list(cls.RETURN_TYPES), spec
    assert class_type in EXTERNAL_NODES, f"workflow references an undeclared node type {class_type!r}"
    ext = EXTERNAL_NODES[class_type]
    return ext["inputs"], ext["widgets"], ext["outputs"], None


@pytest.fixture
def nodes_with_fake_folder_paths(monkeypatch, tmp_path):
    fake = types.ModuleType("folder_paths")
    fake.models_dir = str(tmp_path)
    fake.get_folder_paths = lambda name: [str(tmp_path / name)]
    fake.get_filename_list = lambda name: []
    monkeypatch.setitem(sys.modules, "folder_paths", fake)
    return load_nodes_module()


@pytest.mark.parametrize("workflow", API_WORKFLOWS, ids=lambda p: p.stem)
def test_api_workflow_references_declared_nodes_and_inputs(nodes_with_fake_folder_paths, workflow):
    nodes = nodes_with_fake_folder_paths
    graph = json.loads(workflow.read_text())
    assert {"Ruyi_LoadModel", "Ruyi_I2VSampler"} <= {n["class_type"] for n in graph.values()}
    for node_id, node in graph.items():
        names, _, _, spec = declared(nodes, node["class_type"])
        unknown = set(node["inputs"]) - names
        assert not unknown, f"node {node_id} ({node['class_type']}) has undeclared inputs {unknown}"
        if spec is not None:
            missing = set(spec["required"]) - set(node["inputs"])
            assert not missing, f"node {node_id} ({node['class_type']}) lacks required inputs {missing}"
            for name, value in node["inputs"].items():
                entry = {**spec["required"], **spec.get("optional", {})}[name]
                if isinstance(value, list):
                    source = graph[value[0]]
                    out_types = declared(nodes, source["class_type"])[2]
                    assert out_types[value[1]] == entry[0], f"node {node_id}.{name} is linked to a {out_types[value[1]]}"
                elif isinstance(entry[0], list):
                    assert value in entry[0], f"node {node_id}.{name}={value!r} is not one of {entry[0]}"


@pytest.mark.parametrize("workflow", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_ui_workflow_references_declared_nodes_and_inputs(nodes_with_fake_folder_paths, workflow):
    nodes = nodes_with_fake_folder_paths
    data = json.loads(workflow.read_text())
    by_id = {n["id"]: n for n in data["nodes"]}
    for node in data["nodes"]:
        names, widgets, outputs, spec = declared(nodes, node["type"])
        for slot in node.get("inputs", []):
            assert slot["name"] in names, f"{node['type']} has no input {slot['name']!r}"
        assert [o["type"] for o in node.get("outputs", [])] == outputs
        if spec is not None:  # widget values in declaration order; a seed widget has a control value after it
            values = list(node["widgets_values"])
            for name, entry in widgets:
                value = values.pop(0)
                if isinstance(entry[0], list):
                    assert value in entry[0], f"{node['type']}.{name}={value!r} is not one of {entry[0]}"
                if name == "seed":
                    assert values.pop(0) in ("fixed", "increment", "decrement", "randomize")
            assert not values, f"{node['type']} has extra widget values {values}"
    for link_id, src, src_slot, dst, dst_slot, typ in data["links"]:
        assert by_id[src]["outputs"][src_slot]["type"] == typ
        assert by_id[dst]["inputs"][dst_slot]["link"] == link_id and by_id[dst]["inputs"][dst_slot]["type"] == typ
