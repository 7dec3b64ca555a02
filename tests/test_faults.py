"""Faults while writing: a full disk, SIGTERM and SIGKILL in the middle of each kind of write, and
two runs racing for one output. Each test asserts that the user's files (sentinels, the old
video, old frames, an earlier run's export) come out byte for byte the same.

The full-disk tests mount a small tmpfs (root only; skipped otherwise); the file-size-limit test
(``RLIMIT_FSIZE`` in a subprocess) runs anywhere. The signal tests run this file as a child
process (``python tests/test_faults.py <kind> <target> <marker>``) whose write is held at its most
delicate point — the data on disk, not yet renamed into place — until the test sends the signal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
PYTHON_ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _video(value: float = 0.5, frames: int = 8, size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(value * 100))
    return (value + 0.05 * torch.rand(1, 3, frames, size, size, generator=g)).clamp(0, 1)


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder``: a file's bytes, None for a folder."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def _sentinels(work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    (work / "thesis.txt").write_text("years of work")
    (work / "notes").mkdir()
    (work / "notes" / "a.txt").write_text("a note")


# -- a full disk --------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """``make(kib)``: a fresh tmpfs of that size (root only), unmounted after the test."""
    mounted = []

    def make(kib: int) -> Path:
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(point)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); test_file_size_limit covers it")
        mounted.append(point)
        return point

    yield make
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def _fill(disk: Path, leave_kib: int) -> None:
    """A sentinel file that fills ``disk`` up to ``leave_kib`` of free space."""
    import shutil

    free = shutil.disk_usage(disk).free
    (disk / "big-sentinel.bin").write_bytes(bytes(range(256)) * ((free - leave_kib * 1024) // 256))


def _infer_config(fixture_dir: Path, *overrides: str):
    from ruyi.overrides import compose_command_line

    base = ["model=ruyi_tiny", f"model.path={fixture_dir}", "video_size=[64,64]", "frames=8", "steps=2", "progress=false"]
    return compose_command_line([*base, *overrides], config_dir=CONFIGS, config_name="infer")


def test_full_disk_keeps_the_old_video_and_names_the_disk(fixture_dir, small_disk, capsys):
    """Before: ffmpeg said "No space left on device", the truncated temp file replaced the old video, exit 0."""
    from ruyi import cli

    disk = small_disk(64)
    _sentinels(disk)
    (disk / "v.mp4").write_bytes(b"an earlier video")
    _fill(disk, leave_kib=4)  # the tiny model's 8 frames of 64x64 take ~6 kB
    before = _snapshot(disk)
    assert cli.run(_infer_config(fixture_dir, f"output={disk}/v.mp4")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: no space left on {disk}: the video needs ~") and err.count("\n") == 1, err
    assert err.rstrip().endswith("kB; free space or choose another output"), err
    assert _snapshot(disk) == before  # the old video, the sentinels, and no temporary file


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("precheck", [True, False])
def test_full_disk_keeps_the_old_frames(small_disk, monkeypatch, overwrite, precheck):
    """Frames are checked against the free space first; if the disk fills up meanwhile
    (``precheck=False``), the write itself fails the same way and leaves nothing."""
    from ruyi import io
    from ruyi.errors import OutputError

    disk = small_disk(64)
    _sentinels(disk)
    frames = disk / "frames"
    if overwrite:
        io.write_video(_video(0.2, frames=2), frames)
    _fill(disk, leave_kib=8)
    if not precheck:
        monkeypatch.setattr(io, "check_free_space", lambda *a, **k: None)
    before = _snapshot(disk)
    with pytest.raises(OutputError, match=rf"no space left on {disk}: the frames need ~\d+ kB; free space"):
        io.write_video(torch.rand(1, 3, 8, 64, 64), frames, overwrite=overwrite)  # noise: ~12 kB a frame
    assert _snapshot(disk) == before


@pytest.mark.parametrize(("what", "overrides"), [
    ("the weights need", ["trainer.checkpoint_every_n_steps=null"]),  # the LoRA export
    ("the training checkpoint needs", ["trainer.checkpoint_every_n_steps=1"]),  # Lightning's checkpoint
])  # fmt: skip
def test_full_disk_during_training_leaves_no_output_dir(fixture_dir, small_disk, capsys, what, overrides):
    pytest.importorskip("lightning")
    from ruyi.overrides import compose_command_line
    from ruyi.training.run import run

    disk = small_disk(128)
    _sentinels(disk)
    _fill(disk, leave_kib=24)  # the lock file and a page or two fit, the rank-16 LoRA (~230 kB) does not
    before = _snapshot(disk)
    argv = ["model=ruyi_tiny", f"model.path={fixture_dir}", f"output_dir={disk}/run", "trainer.max_steps=1",
            "trainer.accelerator=cpu", "trainer.logger=none", "trainer.progress_refresh_rate=0", "num_workers=0",
            "data.frames=8", "data.height=64", "data.width=64", "warmup_steps=0", *overrides]  # fmt: skip
    assert run(compose_command_line(argv, config_dir=CONFIGS, config_name="train")) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and lines[0].startswith(f"error: no space left on {disk}: {what} ~"), lines
    assert _snapshot(disk) == before  # output_dir, made by the run, is gone again; a rerun may use it


def test_file_size_limit_keeps_the_old_video(tmp_path):
    """Without root: ``ulimit -f`` (RLIMIT_FSIZE) stops ffmpeg (SIGXFSZ) and Python's writes (EFBIG)."""
    _sentinels(tmp_path)
    (tmp_path / "v.mp4").write_bytes(b"an earlier video")
    before = _snapshot(tmp_path)
    script = (
        "import resource, sys, torch\n"
        "from ruyi.errors import exit_code_of\n"
        "from ruyi.io import write_video\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))\n"
        "video = torch.rand(1, 3, 16, 128, 128, generator=torch.Generator().manual_seed(0))\n"
        f"sys.exit(exit_code_of(lambda: [write_video(video, {str(tmp_path / 'v.mp4')!r}), 0][1], oom_hint=''))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env=PYTHON_ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "the file size limit (ulimit -f) was reached: the video needs ~" in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert _snapshot(tmp_path) == before


# -- SIGTERM and SIGKILL in the middle of a write ---------------------------------------------
def _child(kind: str, target: Path, marker: Path) -> int:
    """Run one write of ``kind`` to ``target`` as the entry points run it (``exit_code_of``), held
    (``marker`` touched, then asleep) once its data is on disk but before it is renamed into place."""
    import ruyi.io
    import ruyi.training.export
    from ruyi.errors import exit_code_of
    from ruyi.files import OutputGuard

    def hold() -> None:
        marker.touch()
        time.sleep(120)

    def work() -> int:
        if kind in ("mp4", "frames", "frames_overwrite"):
            ruyi.io.write_video(_video(0.7), target, overwrite=kind == "frames_overwrite")
        elif kind == "lora":
            tensors = {"lora_unet_blocks_0_attn1_to_q.lora_down.weight": torch.ones(4, 32)}
            ruyi.training.export.save_safetensors(tensors, target)
        elif kind == "checkpoint":
            from ruyi.training.checkpoints import AtomicCheckpointIO

            AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(64, 64)}, "global_step": 7}, target)
        return 0

    if kind == "mp4":  # the real encoder finishes the temporary file, then waits
        real = ruyi.io.ffmpeg_command
        held = f'"$@" && echo $$ > {marker}.pid && touch {marker} && exec sleep 120'  # its pid: for the test to end it
        ruyi.io.ffmpeg_command = lambda *a: ["sh", "-c", held, "sh", *real(*a)]
    elif kind.startswith("frames"):  # held once the third frame is on disk
        real_sync, synced = ruyi.io.fsync_path, []

        def sync(path, **kwargs):
            real_sync(path, **kwargs)
            synced.append(path)
            if len(synced) == 3:
                hold()

        ruyi.io.fsync_path = sync
    elif kind == "lora":  # held once safetensors has written the temporary file
        real_save = ruyi.training.export.save_file
        ruyi.training.export.save_file = lambda *a, **k: (real_save(*a, **k), hold())
    else:  # held once torch has written the temporary checkpoint
        real_torch_save = torch.save
        torch.save = lambda *a, **k: (real_torch_save(*a, **k), hold())
    guard = OutputGuard()
    guard.watch(target)
    return exit_code_of(work, oom_hint="", on_interrupt=guard.describe)


def _old_frames(folder: Path) -> None:
    from ruyi import io

    io.write_video(_video(0.2, frames=12), folder)  # 12 old frames: the new video has 8


TARGETS = {  # kind -> (target under the work folder, how the user's old output is made)
    "mp4": ("v.mp4", lambda p: p.write_bytes(b"an earlier video")),
    "frames": ("frames", lambda p: None),
    "frames_overwrite": ("frames", _old_frames),
    "lora": ("run/lora.safetensors", lambda p: (p.parent.mkdir(), (p.parent / "keep.txt").write_text("mine"))),
    "checkpoint": ("run/checkpoints/last.ckpt", lambda p: (p.parent.mkdir(parents=True), p.write_bytes(b"an earlier checkpoint"))),
}  # fmt: skip


def _start_child(kind: str, target: Path, marker: Path) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, __file__, kind, str(target), str(marker)], env=PYTHON_ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 240
    while not marker.exists():
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"the child never reached its write: {child.communicate()[1][-2000:]}")
        time.sleep(0.05)
    return child


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("kind", list(TARGETS))
def test_a_signal_in_the_middle_of_a_write_changes_nothing(kind, signum, tmp_path):
    work = tmp_path / "work"
    _sentinels(work)
    name, make_old = TARGETS[kind]
    target = work / name
    make_old(target)
    before = _snapshot(work)
    child = _start_child(kind, target, tmp_path / "marker")
    os.kill(child.pid, signum)  # the process, as `kill PID` does; not its helpers
    _, err = child.communicate(timeout=120)
    helper = tmp_path / "marker.pid"  # the held encoder runs in its own session: SIGKILL leaves it behind
    for pid in [child.pid] + ([int(helper.read_text())] if helper.exists() else []):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    after = _snapshot(work)
    if signum == signal.SIGTERM:
        assert child.returncode == 143, err
        assert err.strip().splitlines() == [f"interrupted; {target} was not changed"], err
        assert after == before  # the temporary file or folder is gone too
        return
    assert child.returncode == -signal.SIGKILL
    assert {k: v for k, v in after.items() if k in before} == before  # every old file unchanged
    for left in set(after) - set(before):  # what nothing could clean up: a hidden temporary name beside the target
        parts = Path(left).parts
        hidden = next((i for i, part in enumerate(parts) if part.startswith(".")), None)
        assert hidden is not None, f"{left} is not a temporary name"
        assert work.joinpath(*parts[:hidden]) == target.parent, f"{left} is not beside {target}"
    if kind.startswith("frames"):  # a rerun is not blocked by anything inside the frames folder
        from ruyi import io

        io.write_video(_video(0.9), target, overwrite=True)
        assert sorted(p.name for p in target.iterdir()) == [f"frame_{i:04d}.png" for i in range(8)]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_signal_during_training_leaves_the_output_dir_reusable(fixture_dir, tmp_path, signum):
    """SIGTERM: one line, exit 143, and the folder the run made is gone. SIGKILL cannot clean up: the
    next run into that folder says so and names what to delete; a new folder works."""
    pytest.importorskip("lightning")
    work = tmp_path / "work"
    _sentinels(work)
    out = work / "run"
    command = [sys.executable, str(REPO / "scripts" / "train.py"), "model=ruyi_tiny", f"model.path={fixture_dir}",
               f"output_dir={out}", f"hydra.run.dir={tmp_path / 'hydra'}", "trainer.max_steps=100000",
               "trainer.accelerator=cpu", "trainer.log_every_n_steps=1", "trainer.progress_refresh_rate=0",
               "trainer.checkpoint_every_n_steps=null", "num_workers=1", "data.frames=8", "data.height=64",
               "data.width=64"]  # fmt: skip
    before = _snapshot(work)
    child = subprocess.Popen(command, cwd=tmp_path, env=PYTHON_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 400
    while not (out / "logs" / "metrics.csv").exists():  # training is under way
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()[1][-3000:]
        time.sleep(0.2)
    os.kill(child.pid, signum)
    _, err = child.communicate(timeout=120)
    from ruyi.errors import OutputError
    from ruyi.training.outputs import check_output_dir

    if signum == signal.SIGTERM:
        assert child.returncode == 143, err[-3000:]
        assert "Traceback" not in err and err.strip().splitlines()[-1] == (
            f"interrupted; nothing was written (output_dir={out}, which this run had made, was removed again)"
        ), err[-3000:]
        assert _snapshot(work) == before
        check_output_dir(out)  # the rerun may use it
    else:
        os.killpg(child.pid, signal.SIGKILL)  # its DataLoader worker
        assert child.returncode == -signal.SIGKILL
        assert {k: v for k, v in _snapshot(work).items() if k in before} == before
        with pytest.raises(OutputError, match="of a run that was killed before its first checkpoint; delete"):
            check_output_dir(out)
        check_output_dir(work / "run2")


# -- two runs racing for one output ------------------------------------------------------------
def _race(script: str, count: int = 2) -> list[subprocess.CompletedProcess]:
    """``count`` copies of ``script`` (given ``i``) started together, released by one go-file."""
    go = Path(os.environ.get("TMPDIR", "/tmp")) / f"ruyi-race-{os.getpid()}-{time.monotonic_ns()}"
    prelude = f"import os, sys, time\nwhile not os.path.exists({str(go)!r}): time.sleep(0.005)\n"
    children = [subprocess.Popen([sys.executable, "-c", f"i = {i}\n{prelude}{script}"], env=PYTHON_ENV,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(count)]  # fmt: skip
    time.sleep(3)  # both past their imports
    go.touch()
    try:
        return [subprocess.CompletedProcess(c.args, c.wait(timeout=300), *c.communicate()) for c in children]
    finally:
        go.unlink()


WRITE = (
    "import torch\nfrom ruyi.errors import exit_code_of\nfrom ruyi.io import write_video\n"
    "video = torch.full((1, 3, 8, 64, 64), 0.2 + 0.6 * i)\n"
    "sys.exit(exit_code_of(lambda: [write_video(video, {target!r}), 0][1], oom_hint=''))\n"
)


def test_two_runs_racing_for_one_video_leave_one_whole_video(tmp_path):
    from ruyi.io import read_mp4

    _sentinels(tmp_path)
    (tmp_path / "v.mp4").write_bytes(b"an earlier video")
    before = _snapshot(tmp_path)
    done = _race(WRITE.format(target=str(tmp_path / "v.mp4")))
    assert [d.returncode for d in done] == [0, 0], [d.stderr for d in done]  # a named file is replaced: both may
    frames, _ = read_mp4(tmp_path / "v.mp4")
    assert frames.shape[0] == 8 and np.ptp(frames.mean(axis=(1, 2, 3))) < 2  # one video's frames, not a mix
    del before["v.mp4"]
    assert {k: v for k, v in _snapshot(tmp_path).items() if k != "v.mp4"} == before  # no temporary file left


def test_two_runs_racing_for_one_frames_folder_leave_one_whole_set(tmp_path):
    _sentinels(tmp_path)
    before = _snapshot(tmp_path)
    done = _race(WRITE.format(target=str(tmp_path / "frames")))
    codes = sorted(d.returncode for d in done)
    assert codes == [0, 2], [d.stderr for d in done]
    loser = next(d for d in done if d.returncode == 2)
    assert loser.stderr.startswith("error: ") and loser.stderr.count("\n") == 1, loser.stderr
    assert "appeared while it was being written" in loser.stderr or "is a folder that is not empty" in loser.stderr
    names = sorted(p.name for p in (tmp_path / "frames").iterdir())
    assert names == [f"frame_{i:04d}.png" for i in range(8)]
    levels = {int(np.asarray(Image.open(tmp_path / "frames" / n)).mean()) for n in names}
    assert len(levels) == 1  # all eight from the same run
    assert {k: v for k, v in _snapshot(tmp_path).items() if not k.startswith("frames")} == before


def test_two_runs_racing_for_one_output_dir(tmp_path):
    """The first run holds the folder; the second is refused while it trains, the third once it is done;
    the first run's export comes out unchanged."""
    out = tmp_path / "run"
    hold = (
        "import torch\nfrom ruyi.errors import exit_code_of\nfrom ruyi.training.export import save_safetensors\n"
        "from ruyi.training.outputs import claimed\n"
        "def work():\n"
        f"    with claimed(__import__('pathlib').Path({str(out)!r})):\n"
        f"        open({str(tmp_path / 'held')!r}, 'w').close()\n"
        f"        while not os.path.exists({str(tmp_path / 'release')!r}): time.sleep(0.01)\n"
        f"        save_safetensors({{'w': torch.full((4,), float(i))}}, {str(out / 'lora.safetensors')!r})\n"
        "    return 0\n"
        "sys.exit(exit_code_of(work, oom_hint=''))\n"
    )
    first = subprocess.Popen([sys.executable, "-c", f"i = 1\nimport os, sys, time\n{hold}"], env=PYTHON_ENV,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (tmp_path / "held").exists():
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1]
        time.sleep(0.02)
    second = subprocess.run([sys.executable, "-c", f"i = 2\nimport os, sys, time\n{hold}"], env=PYTHON_ENV,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert second.returncode == 2 and second.stderr.strip() == (
        f"error: output_dir={out} is in use by another training run (pid {first.pid}); pick another output_dir"
    ), second.stderr
    (tmp_path / "release").touch()
    assert first.wait(timeout=120) == 0, first.communicate()[1]
    export = (out / "lora.safetensors").read_bytes()
    third = subprocess.run([sys.executable, "-c", f"i = 3\nimport os, sys, time\n{hold}"], env=PYTHON_ENV,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert third.returncode == 2 and "already holds lora.safetensors from an earlier run" in third.stderr, third.stderr
    assert sorted(p.name for p in out.iterdir()) == ["lora.safetensors"]  # no lock file, nothing of the refused runs
    assert (out / "lora.safetensors").read_bytes() == export


def test_runs_started_together_get_their_own_default_output_dir(tmp_path):
    script = (
        "from hydra import compose, initialize_config_dir\n"
        "from ruyi.training.outputs import register_resolvers\n"
        "register_resolvers()\n"
        f"with initialize_config_dir(config_dir={str(CONFIGS)!r}, version_base=None):\n"
        "    print(compose('train').output_dir)\n"
    )
    done = _race(script, count=3)
    dirs = [d.stdout.strip() for d in done]
    assert all(d.returncode == 0 for d in done), [d.stderr for d in done]
    assert len(set(dirs)) == 3 and all(d.startswith("outputs/train/") for d in dirs), dirs


if __name__ == "__main__":  # the child of the signal tests
    sys.exit(_child(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])))
