"""Talk to a ComfyUI server on 127.0.0.1 with the standard library only: HTTP for /prompt,
/history, /object_info, /interrupt, and a minimal WebSocket reader for its progress messages.

Also converts a UI-format workflow to the API format the way ComfyUI's frontend does, from the
server's own ``/object_info`` (input order, widget kinds).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any

from tests.comfyui_real.original_layouts import has_seed_control, widget_inputs

WIDGET_KINDS = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


class WebSocket:
    """Client side of RFC 6455, enough for ComfyUI's server: reads unfragmented text frames."""

    def __init__(self, host: str, port: int, path: str, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError("websocket handshake: connection closed")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"websocket handshake refused: {head[:200]!r}")

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("websocket closed")
            data += chunk
        return data

    def recv_json(self, timeout: float) -> dict[str, Any] | None:
        """The next JSON text message, or None when nothing came within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                b0, b1 = self._read(2)
            except (socket.timeout, TimeoutError):
                return None
            self.sock.settimeout(None)  # a started frame is read to its end
            length = b1 & 0x7F
            if length == 126:
                length = struct.unpack(">H", self._read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            payload = self._read(length)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise ConnectionError("websocket closed by the server")
            if opcode == 0x1:
                return json.loads(payload)
            # binary frames (previews) and pings are skipped

    def close(self) -> None:
        self.sock.close()


@dataclass
class Run:
    """What happened to one queued prompt."""

    prompt_id: str
    status: str  # execution_success | execution_error | execution_interrupted | timeout
    messages: list[dict[str, Any]] = field(default_factory=list)
    history: dict[str, Any] = field(default_factory=dict)

    def progress(self, node_id: str) -> list[tuple[int, int]]:
        return [(m["data"]["value"], m["data"]["max"]) for m in self.messages
                if m["type"] == "progress" and str(m["data"].get("node")) == node_id]  # fmt: skip

    def outputs(self, node_id: str) -> dict[str, Any]:
        return self.history.get("outputs", {}).get(node_id, {})

    def error(self) -> str:
        errors = [m["data"] for m in self.messages if m["type"] == "execution_error"]
        return json.dumps(errors[-1], indent=1)[:3000] if errors else ""


class ComfyClient:
    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.host, self.port = host, port
        self.client_id = uuid.uuid4().hex
        self.ws: WebSocket | None = None

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def get(self, path: str, timeout: float = 60) -> Any:
        with urllib.request.urlopen(self.url(path), timeout=timeout) as response:
            return json.loads(response.read() or b"null")

    def post(self, path: str, body: dict[str, Any] | None = None, timeout: float = 60) -> tuple[int, Any]:
        data = json.dumps(body or {}).encode()
        request = urllib.request.Request(self.url(path), data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                return err.code, json.loads(raw)
            except ValueError:
                return err.code, raw.decode(errors="replace")

    def connect(self) -> None:
        if self.ws is None:
            self.ws = WebSocket(self.host, self.port, f"/ws?clientId={self.client_id}")

    def queue(self, graph: dict[str, Any]) -> tuple[int, Any]:
        """POST /prompt: (200, {"prompt_id": ...}) or (400, {"error": ..., "node_errors": ...})."""
        self.connect()
        return self.post("/prompt", {"prompt": graph, "client_id": self.client_id})

    def wait(self, prompt_id: str, timeout: float, on_message=None) -> Run:
        """Read websocket messages until this prompt succeeds, fails or is interrupted."""
        run = Run(prompt_id=prompt_id, status="timeout")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self.ws.recv_json(timeout=min(5.0, deadline - time.monotonic()))
            if message is None:
                continue
            data = message.get("data") or {}
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            run.messages.append(message)
            if on_message is not None:
                on_message(message)
            if message["type"] in ("execution_success", "execution_error", "execution_interrupted"):
                run.status = message["type"]
                break
        # the history entry is written just after the final message
        history_deadline = time.monotonic() + 30
        while not run.history and time.monotonic() < history_deadline:
            run.history = self.get(f"/history/{prompt_id}").get(prompt_id, {})
            if not run.history:
                time.sleep(0.2)
        return run

    def run(self, graph: dict[str, Any], timeout: float = 600, on_message=None) -> Run:
        status, body = self.queue(graph)
        assert status == 200, f"ComfyUI rejected the prompt ({status}): {json.dumps(body, indent=1)[:3000]}"
        return self.wait(body["prompt_id"], timeout, on_message)

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None


# -- UI format -> API format -------------------------------------------------------------------------
def is_widget(entry: list[Any]) -> bool:
    kind = entry[0]
    return isinstance(kind, list) or kind in WIDGET_KINDS


def default_value(entry: list[Any]) -> Any:
    """What the frontend shows in a new widget: its declared default, else a combo's first choice."""
    options = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
    if "default" in options:
        return options["default"]
    if isinstance(entry[0], list):
        return entry[0][0]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(entry[0])


def widget_specs(info: dict[str, Any]) -> list[tuple[str, list[Any]]]:
    """(input name, spec) of a node type's widgets, in the order the UI saves their values; an
    image-upload input is followed by the frontend's upload button, whose value is saved too."""
    specs = []
    for section in ("required", "optional"):
        declared = info["input"].get(section, {})
        for name in info["input_order"].get(section, []):
            entry = declared[name]
            if is_widget(entry):
                specs.append((name, entry))
                options = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
                if options.get("image_upload"):
                    specs.append(("upload", ["UPLOAD"]))
    return specs


def ui_to_api(workflow: dict[str, Any], object_info: dict[str, Any]) -> dict[str, Any]:
    """A UI-format workflow (nodes + links + widgets_values) as an API-format prompt."""
    links = {link[0]: link for link in workflow["links"]}
    graph: dict[str, Any] = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) != 0:  # muted / bypassed nodes are not sent
            continue
        info = object_info[node["type"]]
        inputs: dict[str, Any] = {}
        values = node.get("widgets_values", [])
        if isinstance(values, dict):  # some custom nodes save named values
            inputs.update({k: v for k, v in values.items() if k in info["input"].get("required", {}) | info["input"].get("optional", {})})
        else:
            specs = widget_specs(info)
            named = widget_inputs(specs, values)
            # widgets the saved file has no value for (added after it was saved) keep their defaults
            named |= {n: default_value(e) for n, e in specs if n not in named and n != "upload"}
            inputs.update({k: v for k, v in named.items() if k != "upload"})
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                _, src, src_slot, *_ = links[slot["link"]]
                inputs[slot["name"]] = [str(src), src_slot]
        graph[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return graph


__all__ = ["ComfyClient", "Run", "WebSocket", "has_seed_control", "ui_to_api", "widget_specs"]
