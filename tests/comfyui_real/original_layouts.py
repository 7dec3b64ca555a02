"""The original project's published ComfyUI workflows, as facts: node types, widget values in the
order its UI format stores them, and links. Written from IamCreateAI/Ruyi-Models'
``comfyui/workflows/*.json`` (4 files) and its nodes' declared choices; the files are not copied.

Its users' saved workflows look like these, so tests/test_comfyui.py and tests/comfyui_real check
that they load and run here unchanged. ``VHS_VideoCombine`` (VideoHelperSuite) saved their video.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SEED_CONTROL = ("fixed", "increment", "decrement", "randomize")

# node id -> (type, widget values); links: (from node, output slot, to node, input name)
_START_FRAME = {
    1: ("Ruyi_LoadModel", ["Ruyi-Mini-7B", "yes", "yes"]),
    2: ("Ruyi_I2VSampler", [120, 512, 925247271358454, "randomize", 25, 7, "DDIM", "2", "static", "normal_mode", "5"]),
    3: ("LoadImage", ["example_03.jpg", "image"]),
    4: ("VHS_VideoCombine", {"frame_rate": 24, "loop_count": 0, "filename_prefix": "Ruyi-I2V-StartFrame",
                             "format": "video/h264-mp4", "pix_fmt": "yuv420p", "crf": 19, "save_metadata": True,
                             "pingpong": False, "save_output": True}),
}  # fmt: skip
_START_FRAME_LINKS = [(1, 0, 2, "ruyi_model"), (3, 0, 2, "start_img"), (2, 0, 4, "images")]

_START_END = {
    1: ("Ruyi_LoadModel", ["Ruyi-Mini-7B", "yes", "yes"]),
    2: ("Ruyi_I2VSampler", [120, 512, 112876945129710, "randomize", 25, 7, "DDIM", "auto", "auto", "normal_mode", "5"]),
    3: ("LoadImage", ["gir_01.jpg", "image"]),
    4: ("LoadImage", ["girl_02.jpg", "image"]),
    5: ("VHS_VideoCombine", {"frame_rate": 24, "loop_count": 0, "filename_prefix": "Ruyi-I2V-StartEndFrames",
                             "format": "video/h264-mp4", "pix_fmt": "yuv420p", "crf": 19, "save_metadata": True,
                             "pingpong": False, "save_output": True}),
}  # fmt: skip
_START_END_LINKS = [(1, 0, 2, "ruyi_model"), (3, 0, 2, "start_img"), (4, 0, 2, "end_img"), (2, 0, 5, "images")]


def _variant(nodes: dict, node_id: int, values: list) -> dict:
    return {**nodes, node_id: (nodes[node_id][0], values)}


ORIGINAL_GRAPHS: dict[str, tuple[dict[int, tuple[str, Any]], list[tuple[int, int, int, str]]]] = {
    "start-frame": (_START_FRAME, _START_FRAME_LINKS),
    # the -80g files differ only in GPU_offload_steps "0"
    "start-frame-80g": (
        _variant(_START_FRAME, 2, [120, 512, 925247271358454, "randomize", 25, 7, "DDIM", "2", "static", "normal_mode", "0"]),
        _START_FRAME_LINKS,
    ),
    "start-end-frames": (_START_END, _START_END_LINKS),
    "start-end-frames-80g": (
        _variant(_START_END, 2, [120, 512, 112876945129710, "randomize", 25, 7, "DDIM", "auto", "auto", "normal_mode", "0"]),
        _START_END_LINKS,
    ),
    # saved after the original added FP8 (its Load Model then had 5 widgets; its choices:
    # none/lite/strong/extreme and auto/fp8_e4m3fn/fp8_e5m2) and with its other schedulers
    "start-frame-fp8-lite": (
        _variant(_variant(_START_FRAME, 1, ["Ruyi-Mini-7B", "yes", "no", "lite", "fp8_e4m3fn"]), 2,
                 [120, 512, 7, "fixed", 25, 7, "Euler A", "3", "left", "low_memory_mode", "1"]),
        _START_FRAME_LINKS,
    ),  # fmt: skip
    "start-frame-fp8-none": (
        _variant(_variant(_START_FRAME, 1, ["Ruyi-Mini-7B", "no", "no", "none", "auto"]), 2,
                 [120, 512, 7, "fixed", 25, 7, "DPM++", "auto", "up", "normal_mode", "10"]),
        _START_FRAME_LINKS,
    ),  # fmt: skip
}

# {workflow: {node type: widget values}} for the Ruyi nodes (each appears once per workflow)
ORIGINAL_WORKFLOWS = {
    name: {t: v for t, v in nodes.values() if t.startswith("Ruyi_")} for name, (nodes, _) in ORIGINAL_GRAPHS.items()
}


def has_seed_control(name: str, entry: Sequence[Any]) -> bool:
    """Whether ComfyUI's frontend adds a control_after_generate widget (its value saved next) after this one."""
    options = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
    return entry[0] == "INT" and (name in ("seed", "noise_seed") or bool(options.get("control_after_generate")))


def widget_inputs(widgets: Sequence[tuple[str, Sequence[Any]]], values: Sequence[Any]) -> dict[str, Any]:
    """UI-format ``widgets_values`` -> {input name: value}, by position as ComfyUI's frontend assigns
    them. Widgets without a saved value keep their defaults (absent here); extra values are an error."""
    values = list(values)
    inputs: dict[str, Any] = {}
    for name, entry in widgets:
        if not values:
            break
        inputs[name] = values.pop(0)
        if has_seed_control(name, entry) and values:
            control = values.pop(0)
            assert control in SEED_CONTROL, f"{name}'s control value {control!r} is not one of {SEED_CONTROL}"
    assert not values, f"more widget values than widgets: {values} left over"
    return inputs
