"""The Ruyi nodes in a real ComfyUI: loaded by its server, validated and executed by its own
``validate_prompt`` + ``PromptExecutor``, watched over its HTTP API and websocket on 127.0.0.1.

The sampler runs shrunk for the CPU (8 frames, 2 steps, 64 x 96) on the tiny random checkpoint.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import pytest

from tests.comfyui_real.comfy_client import ComfyClient, ui_to_api
from tests.comfyui_real.conftest import LORA_TARGETS, timed
from tests.comfyui_real.original_layouts import ORIGINAL_GRAPHS

pytestmark = pytest.mark.comfyui

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "comfyui" / "workflows"
API_WORKFLOWS = sorted(WORKFLOWS.glob("*-api.json"))
RUYI_NODES = {"Ruyi_LoadModel", "Ruyi_LoadLora", "Ruyi_TeaCache", "Ruyi_EnhanceAVideo", "Ruyi_I2VSampler"}
TINY = {"video_length": 8, "steps": 2, "video_height": 64, "video_width": 96}
FRAMES, HEIGHT, WIDTH, FPS = 8, 64, 96, 24


def node_id(graph: dict, class_type: str) -> str:
    (found,) = [k for k, v in graph.items() if v["class_type"] == class_type]
    return found


def shrunk(graph: dict, **sampler_inputs) -> dict:
    graph = copy.deepcopy(graph)
    graph[node_id(graph, "Ruyi_I2VSampler")]["inputs"].update({**TINY, **sampler_inputs})
    return graph


def saved_video(client: ComfyClient, run) -> Path:
    """The file SaveVideo wrote, from the history entry ComfyUI keeps for the prompt."""
    graph = run.history["prompt"][2]
    (result,) = run.outputs(node_id(graph, "SaveVideo"))["images"]
    return client.home / result["type"] / result["subfolder"] / result["filename"]


def read_video(path: Path) -> tuple[np.ndarray, float]:
    from ruyi.io import read_mp4

    return read_mp4(path)


def run_ok(client: ComfyClient, graph: dict, what: str):
    start = time.monotonic()
    run = client.run(graph, timeout=600)
    timed(what, start)
    assert run.status == "execution_success", f"{what}: {run.status}\n{run.error()}\n{client.log_tail()}"
    return run


def test_nodes_loaded_with_registry_choices_and_tooltips(comfy_server):
    info = comfy_server.get("/object_info")
    assert RUYI_NODES <= set(info), f"missing Ruyi nodes; server log:\n{comfy_server.log_tail()}"
    for name in RUYI_NODES:
        assert info[name]["category"] == "Ruyi"
        inputs = {**info[name]["input"]["required"], **info[name]["input"].get("optional", {})}
        untipped = [i for i, entry in inputs.items() if not (len(entry) > 1 and entry[1].get("tooltip"))]
        assert not untipped, f"{name} inputs without a tooltip: {untipped}"
    load, sampler = info["Ruyi_LoadModel"]["input"]["required"], info["Ruyi_I2VSampler"]["input"]["required"]
    # the registries' built-ins: the original's five scheduler labels and a distilled student's
    # few-step sampler, four offloads, every precision
    assert set(sampler["scheduler"][0]) == {"Euler", "Euler A", "DPM++", "PNDM", "DDIM", "Turbo"}
    assert set(load["offload"][0]) == {"none", "model", "sequential", "group"}
    # every registered precision; fp8_compute also needs compile, which the node leaves off (one-line error)
    assert set(load["fp8_quant_mode"][0]) == {"bf16", "fp8_lite", "fp8_strong", "fp8_extreme", "fp8_compute"}
    assert "Ruyi-Mini-7B" in load["model"][0]


@pytest.mark.parametrize("workflow", API_WORKFLOWS, ids=lambda p: p.stem)
def test_shipped_api_workflow_writes_a_24fps_mp4(comfy_server, workflow):
    graph = shrunk(json.loads(workflow.read_text()))
    sampler = node_id(graph, "Ruyi_I2VSampler")
    run = run_ok(comfy_server, graph, f"run {workflow.name} (8 frames, 2 steps)")
    assert run.progress(sampler) == [(1, 2), (2, 2)]  # one websocket progress message per step
    frames, fps = read_video(saved_video(comfy_server, run))
    assert frames.shape == (FRAMES, HEIGHT, WIDTH, 3) and fps == FPS


@pytest.mark.parametrize("workflow", API_WORKFLOWS, ids=lambda p: p.stem.removesuffix("-api"))
def test_shipped_ui_workflow_is_its_api_workflow(comfy_server, workflow):
    """Loading the UI file in ComfyUI's frontend queues what the API file holds."""
    info = comfy_server.get("/object_info")
    ui = json.loads(workflow.with_name(workflow.name.replace("-api", "")).read_text())
    api = json.loads(workflow.read_text())
    expected = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()}
    assert ui_to_api(ui, info) == expected


def original_as_api(name: str, info: dict) -> dict:
    """The original's workflow as ComfyUI's frontend would queue it, VideoHelperSuite's combine
    node (not on a stock ComfyUI) replaced by the built-in CreateVideo + SaveVideo."""
    nodes, links = ORIGINAL_GRAPHS[name]
    ui = {"nodes": [], "links": []}
    for nid, (class_type, values) in nodes.items():
        ui["nodes"].append({"id": nid, "type": class_type, "mode": 0, "inputs": [], "widgets_values": values})
    by_id = {n["id"]: n for n in ui["nodes"]}
    for link_id, (src, slot, dst, input_name) in enumerate(links, start=1):
        ui["links"].append([link_id, src, slot, dst, 0, None])
        by_id[dst]["inputs"].append({"name": input_name, "link": link_id})
    combine = next(n for n in ui["nodes"] if n["type"] == "VHS_VideoCombine")
    ui["nodes"].remove(combine)
    graph = ui_to_api(ui, info)
    images = next(l for l in links if l[2] == combine["id"])
    graph["90"] = {"class_type": "CreateVideo", "inputs": {"images": [str(images[0]), images[1]], "fps": combine["widgets_values"]["frame_rate"]}}
    graph["91"] = {"class_type": "SaveVideo", "inputs": {"video": ["90", 0], "filename_prefix": f"original/{name}", "format": "mp4", "codec": "h264"}}
    return graph


@pytest.mark.parametrize("name", sorted(ORIGINAL_GRAPHS))
def test_original_workflow_runs_unchanged(comfy_server, name):
    """The original's saved widget values (its fp8 and scheduler spellings included) pass ComfyUI's
    validation and run; only the length, steps and size are shrunk for the CPU."""
    graph = shrunk(original_as_api(name, comfy_server.get("/object_info")))
    nodes = ORIGINAL_GRAPHS[name][0]
    for nid, (class_type, values) in nodes.items():  # every saved Ruyi widget value is sent as saved
        if class_type == "Ruyi_LoadModel":
            assert list(graph[str(nid)]["inputs"].values())[: len(values)] == values
    run = run_ok(comfy_server, graph, f"run the original's {name} workflow")
    frames, fps = read_video(saved_video(comfy_server, run))
    assert frames.shape == (FRAMES, HEIGHT, WIDTH, 3) and fps == FPS


START_FRAME = json.loads((WORKFLOWS / "ruyi-i2v-start-frame-api.json").read_text())


@pytest.mark.parametrize(
    ("class_type", "inputs", "error_type", "named"),
    [
        ("Ruyi_I2VSampler", {"camera_direction": "sideways"}, "value_not_in_list", "camera_direction"),
        ("Ruyi_I2VSampler", {"steps": 0}, "value_smaller_than_min", "steps"),
        ("Ruyi_I2VSampler", {"video_length": 128}, "value_bigger_than_max", "video_length"),
        ("Ruyi_I2VSampler", {"scheduler": "LMS"}, "custom_validation_failed", "scheduler='LMS' is not one of"),
        ("Ruyi_LoadModel", {"fp8_quant_mode": "fp16"}, "custom_validation_failed", "fp8_quant_mode='fp16' is not one of"),
        ("Ruyi_LoadModel", {"offload": "gpu"}, "value_not_in_list", "offload"),
        ("LoadImage", {"image": "missing.png"}, "custom_validation_failed", "missing.png"),
    ],
    ids=["camera", "steps", "frames", "scheduler", "fp8-mode", "offload", "missing-image"],
)
def test_bad_input_rejected_by_validation_naming_the_node(comfy_server, class_type, inputs, error_type, named):
    graph = shrunk(START_FRAME)
    bad = node_id(graph, class_type)
    graph[bad]["inputs"].update(inputs)
    status, body = comfy_server.queue(graph)
    assert status == 400, body
    assert set(body["node_errors"]) == {bad}, body["node_errors"]
    node_error = body["node_errors"][bad]
    assert node_error["class_type"] == class_type
    assert any(e["type"] == error_type and named in e["details"] for e in node_error["errors"]), node_error


def test_interrupt_mid_sampling_then_next_run_succeeds(comfy_server):
    graph = shrunk(START_FRAME, steps=200, seed=11)
    sampler = node_id(graph, "Ruyi_I2VSampler")
    sent = []

    def interrupt_after_first_step(message):
        if not sent and message["type"] == "progress" and str(message["data"]["node"]) == sampler:
            sent.append(comfy_server.post("/interrupt")[0])

    start = time.monotonic()
    run = comfy_server.run(graph, timeout=600, on_message=interrupt_after_first_step)
    timed("interrupted run", start)
    assert sent == [200]
    assert run.status == "execution_interrupted", f"{run.status}\n{run.error()}"
    steps_done = [value for value, _ in run.progress(sampler)]
    assert steps_done and max(steps_done) < 200
    assert not run.outputs(node_id(graph, "SaveVideo"))  # nothing saved
    # the same nodes (TeaCache and Enhance-A-Video attached again) run to the end next time
    run = run_ok(comfy_server, shrunk(START_FRAME, seed=11), "run after the interrupt")
    assert read_video(saved_video(comfy_server, run))[0].shape == (FRAMES, HEIGHT, WIDTH, 3)


def test_lora_in_models_loras_is_listed_and_changes_the_output(comfy_server):
    info = comfy_server.get("/object_info/Ruyi_LoadLora")["Ruyi_LoadLora"]
    assert "tiny-style.safetensors" in info["input"]["required"]["lora_name"][0]
    base = shrunk(json.loads((WORKFLOWS / "ruyi-i2v-start-end-frames-api.json").read_text()), seed=5)
    sampler, save = node_id(base, "Ruyi_I2VSampler"), node_id(base, "SaveVideo")
    with_lora = copy.deepcopy(base)
    with_lora["50"] = {"class_type": "Ruyi_LoadLora",
                       "inputs": {"ruyi_model": with_lora[sampler]["inputs"]["ruyi_model"],
                                  "lora_name": "tiny-style.safetensors", "strength_model": 1.0}}  # fmt: skip
    with_lora[sampler]["inputs"]["ruyi_model"] = ["50", 0]
    with_lora[save]["inputs"]["filename_prefix"] = "ruyi/lora"
    again = copy.deepcopy(base)
    again[save]["inputs"]["filename_prefix"] = "ruyi/without-lora-again"
    videos = [read_video(saved_video(comfy_server, run_ok(comfy_server, g, what)))[0].astype(np.float32)
              for g, what in ((base, "run without LoRA"), (with_lora, f"run with a LoRA on {len(LORA_TARGETS)} layers"),
                              (again, "run without LoRA again"))]  # fmt: skip
    plain, lora, plain_again = videos
    assert np.abs(lora - plain).mean() > 5, "the LoRA did not change the video"
    assert np.abs(plain_again - plain).mean() < 0.5, "the LoRA stayed merged after it was removed from the graph"


def test_choice_the_plan_rejects_fails_the_sampler_before_loading(comfy_server):
    """Load Model's offload=group on this CPU-only machine: the assembly's whole-plan check
    (AcceleratorRequired) stops the sampler before any weight loads; ComfyUI reports it as that
    node's error, in one line that names the option and the fix."""
    graph = shrunk(START_FRAME, seed=21)
    graph[node_id(graph, "Ruyi_LoadModel")]["inputs"]["offload"] = "group"
    start = time.monotonic()
    run = comfy_server.run(graph, timeout=300)
    timed("choice rejected by the plan", start)
    assert run.status == "execution_error"
    (error,) = [m["data"] for m in run.messages if m["type"] == "execution_error"]
    assert error["node_type"] == "Ruyi_I2VSampler" and error["node_id"] == node_id(graph, "Ruyi_I2VSampler")
    assert error["exception_type"].endswith("AcceleratorRequired"), error["exception_type"]
    assert "offload=group" in error["exception_message"] and "\n" not in error["exception_message"].strip()
