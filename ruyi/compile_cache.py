"""Compiled kernels kept on disk, so the compile warm-up is paid once per machine, not per process.

torch.compile already caches inductor's generated code (the FX graph cache) and the AOTAutograd
graphs by key; a new process at a shape seen before only re-runs Dynamo's trace and loads the rest.
By default torch keeps them under the system's temporary folder, which is emptied on reboot and
shared by every program. ``compile=regional|auto`` points torch at ruyi's own folder instead
(``$RUYI_CACHE_DIR``, else ``$XDG_CACHE_HOME/ruyi``, else ``~/.cache/ruyi``, then
``torch-compile/``), logs it once, and leaves a ``TORCHINDUCTOR_CACHE_DIR`` the user set alone.

``python -m ruyi cache`` shows the folder and its size; ``python -m ruyi cache clear`` removes it
(only a folder ruyi made: it carries a marker file). An unreadable or corrupt entry is a cache miss
for torch, which compiles again and rewrites it (tests/test_compile_cache.py corrupts every file).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from ruyi.errors import ConfigError

log = logging.getLogger(__name__)

MARKER = ".ruyi-compile-cache"
_announced: set[str] = set()


def ruyi_cache_root() -> Path:
    if os.environ.get("RUYI_CACHE_DIR"):
        return Path(os.environ["RUYI_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "ruyi"


def user_inductor_dir() -> str | None:
    """A ``TORCHINDUCTOR_CACHE_DIR`` the user chose. Importing diffusers already sets the variable
    to torch's default (inductor records the folder it picked), so that value does not count."""
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not chosen or os.path.abspath(chosen) == os.path.abspath(torch_default_dir()):
        return None
    return chosen


def compile_cache_dir() -> Path:
    """Where compiled artefacts go: the user's ``TORCHINDUCTOR_CACHE_DIR`` if set, else ruyi's folder."""
    chosen = user_inductor_dir()
    return Path(chosen) if chosen else ruyi_cache_root() / "torch-compile"


def enable_compile_cache() -> Path:
    """Before the first compile: torch's on-disk caches on, in :func:`compile_cache_dir`."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    folder = compile_cache_dir()
    if user_inductor_dir() is None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / MARKER).touch()
        except OSError as err:  # a read-only home: torch's default (the temporary folder) still caches
            log.warning("cannot use %s for compiled kernels (%s); torch's default cache applies", folder, err)
            return Path(torch_default_dir())
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True
    if str(folder) not in _announced:
        _announced.add(str(folder))
        log.info("compiled kernels are cached in %s (python -m ruyi cache clear removes them)", folder)
    return folder


def torch_default_dir() -> str:
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    return default_cache_dir()


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def clear_compile_cache() -> Path:
    """Remove ruyi's compile cache folder; refuses a folder ruyi did not make (no marker)."""
    folder = compile_cache_dir()
    if not folder.exists():
        return folder
    if not (folder / MARKER).is_file():
        raise ConfigError(
            f"{folder} was not made by ruyi (no {MARKER} in it); remove it yourself if it is yours to remove"
        )
    shutil.rmtree(folder)
    return folder


def cache_command(args: list[str]) -> int:
    """``python -m ruyi cache [clear]``."""
    if args == ["clear"]:
        try:
            folder = clear_compile_cache()
        except ConfigError as err:
            print(f"error: {err}")
            return 2
        print(f"removed {folder}")
        return 0
    if args:
        print("usage: python -m ruyi cache [clear]")
        return 2
    folder = compile_cache_dir()
    print(f"{folder}  {folder_size(folder) / 2**20:.1f} MiB" + ("" if folder.exists() else " (not created yet)"))
    return 0
