"""Extending without editing the core: a sampler, a plugin, an offload strategy and a dataset from a
module outside the package and a config folder outside configs/ (``hydra.searchpath``), run through
scripts/infer.py, scripts/train.py and the ComfyUI choice lists."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

MODULE = '''
from pathlib import Path

from ruyi.extension import Extension
from ruyi.placement.none import NoOffload
from ruyi.registry import DATASETS, OFFLOADS, PLUGINS, SAMPLERS
from ruyi.samplers.schedulers import DDIMSampler
from ruyi.training.data.procedural import ProceduralPans


def mark(folder, what):
    (Path(folder) / what).write_text("ran")


@SAMPLERS.register("my_ddim")
class MyDDIM(DDIMSampler):
    """DDIM that leaves a mark when it sets its timesteps."""

    label = "My DDIM"

    def __init__(self, *, scheduler_config, marks: str, **kwargs):
        super().__init__(scheduler_config=scheduler_config, **kwargs)
        self.marks = marks

    def set_timesteps(self, steps, device=None):
        mark(self.marks, "sampler")
        return super().set_timesteps(steps, device=device)


@PLUGINS.register("my_marker")
class MyMarker(Extension):
    """A plugin that leaves a mark when attached."""

    stage = "plugins"

    def __init__(self, *, marks: str):
        self.marks = marks

    def apply(self, pipe):
        mark(self.marks, "plugin")

    def remove(self, pipe):
        pass


@OFFLOADS.register("my_offload")
class MyOffload(NoOffload):
    """Everything on the device, and a mark."""

    def __init__(self, *, marks: str):
        super().__init__()
        self.marks = marks

    def apply(self, pipe):
        super().apply(pipe)
        mark(self.marks, "offload")


@DATASETS.register("my_pans")
class MyPans(ProceduralPans):
    """Procedural pans that leave a mark when read."""

    def __init__(self, *, marks: str, **kwargs):
        super().__init__(**kwargs)
        self.marks = marks

    def __getitem__(self, index):
        mark(self.marks, "dataset")
        return super().__getitem__(index)
'''

CONFIGS = {
    "sampler/my_ddim.yaml": "_target_: my_extension.MyDDIM\neta: 0.0\nmarks: ???\n",
    "offload/my_offload.yaml": "_target_: my_extension.MyOffload\nmarks: ???\n",
    "plugin/my_marker.yaml": "my_marker:\n  _target_: my_extension.MyMarker\n  marks: ???\n",
    "data/my_pans.yaml": textwrap.dedent("""\
        _target_: my_extension.MyPans
        marks: ???
        frames: 8
        height: 64
        width: 64
        length: 4
        seed: 0
        split: train
        pixels_per_frame: [2, 4, 6, 8]
        auto_prob: 0.1
        kinds: [noise, shapes]
        bank_size: 4
    """),
}  # fmt: skip


@pytest.fixture()
def extension(tmp_path):
    """(environment with the module importable, searchpath override, marks folder)."""
    (tmp_path / "my_extension.py").write_text(MODULE)
    configs = tmp_path / "my_configs"
    for name, text in CONFIGS.items():
        (configs / name).parent.mkdir(parents=True, exist_ok=True)
        (configs / name).write_text(text)
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    return env, f"hydra.searchpath=[file://{configs}]", marks


def _run(script: str, args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / script), *args], capture_output=True, text=True,
                          env=env, cwd=cwd)  # fmt: skip


def test_infer_runs_a_sampler_plugin_and_offload_from_outside(extension, tmp_path):
    env, searchpath, marks = extension
    proc = _run("infer.py", [searchpath, "sampler=my_ddim", f"sampler.marks={marks}", "offload=my_offload",
                             f"offload.marks={marks}", "plugin=[teacache,my_marker]", f"plugin.my_marker.marks={marks}", "steps=2",
                             "device=cpu", "progress=false", f"output={tmp_path / 'out.mp4'}"], env, tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {p.name for p in marks.iterdir()} == {"sampler", "plugin", "offload"}
    assert (tmp_path / "out.mp4").stat().st_size > 0


def test_train_runs_a_dataset_from_outside(extension, tmp_path):
    env, searchpath, marks = extension
    proc = _run("train.py", [searchpath, "data=my_pans", f"data.marks={marks}", "model=ruyi_tiny_pans",
                             "trainer.max_steps=1", "num_workers=0", "batch_size=1", "warmup_steps=0",
                             f"output_dir={tmp_path / 'run'}"], env, tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (marks / "dataset").exists()


def test_comfyui_choice_lists_show_components_from_outside(extension):
    env, _, _ = extension
    code = ("import my_extension; from comfyui import choices; "
            "print('My DDIM' in choices.sampler_labels(), 'my_offload' in choices.offloads())")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["True", "True"]
