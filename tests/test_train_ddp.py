"""trainer=ddp on the CPU: two gloo processes train LoRA for a few steps and end with equal weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

pytest.importorskip("lightning")
pytest.importorskip("peft")

import lightning as L  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class SaveRankWeights(L.Callback):
    """Each rank writes its trainable weights to ``folder/rank<N>.safetensors`` when training ends."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_end(self, trainer, pl_module) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        state = {n: p.detach().cpu().contiguous() for n, p in pl_module.named_parameters() if p.requires_grad}
        save_file(state, str(self.folder / f"rank{trainer.global_rank}.safetensors"))


def test_two_gloo_ranks_hold_identical_weights(fixture_dir, tmp_path):
    out, ranks = tmp_path / "run", tmp_path / "ranks"
    callback = f"[{{_target_: tests.test_train_ddp.SaveRankWeights, folder: '{ranks}'}}]"
    command = [
        sys.executable, str(REPO / "scripts" / "train.py"), "model=ruyi_tiny", f"model.path={fixture_dir}", f"output_dir={out}",
        "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_steps=3",
        "trainer.logger=none", "trainer.checkpoint_every_n_steps=null", "trainer.progress_refresh_rate=0",
        f"trainer.callbacks={callback}", "data.frames=8", "data.height=64", "data.width=64", "batch_size=1",
        "num_workers=0", "learning_rate=1e-2", "warmup_steps=0", "finetune.rank=2", f"hydra.run.dir={tmp_path / 'hydra'}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    zero, one = load_file(str(ranks / "rank0.safetensors")), load_file(str(ranks / "rank1.safetensors"))
    assert set(zero) == set(one) and zero
    for name in zero:
        assert torch.equal(zero[name], one[name]), name
    # the LoRA up matrices start at zero: trained ones are not, so the ranks agree on real updates
    assert all(zero[n].abs().sum() > 0 for n in zero if ".lora_B." in n)
    assert (out / "lora.safetensors").is_file()
