"""Training on CUDA: bf16-mixed LoRA on one GPU, FSDP full fine-tuning over two (skipped elsewhere)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")
pytest.importorskip("peft")

from ruyi.training.run import build_run  # noqa: E402
from tests.test_train import train_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")


def test_bf16_mixed_lora_with_activation_checkpointing(fixture_dir, tmp_path):
    job = build_run(train_config(
        fixture_dir, tmp_path / "run", "trainer.accelerator=gpu", "trainer.max_steps=3", "gradient_checkpointing=true",
        "learning_rate=1e-2",
    ))  # fmt: skip
    assert job.trainer.precision == "bf16-mixed"
    job.fit()
    assert torch.isfinite(torch.tensor(float(job.trainer.callback_metrics["train/loss"])))
    assert job.export().is_file()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="FSDP needs 2 GPUs")
def test_fsdp_full_finetune_over_two_gpus_exports_a_loadable_checkpoint(fixture_dir, tmp_path):
    import ruyi

    out = tmp_path / "run"
    command = [
        sys.executable, str(REPO / "scripts" / "train.py"), "model=ruyi_tiny", f"model.path={fixture_dir}", f"output_dir={out}",
        "trainer=fsdp", "trainer.devices=2", "trainer.max_steps=3", "trainer.logger=none",
        "trainer.checkpoint_every_n_steps=null", "trainer.progress_refresh_rate=0", "finetune=full",
        "data.frames=8", "data.height=64", "data.width=64", "batch_size=1", "num_workers=0",
        f"hydra.run.dir={tmp_path / 'hydra'}",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    pipe = ruyi.load_pipeline(out / "checkpoint")
    source = ruyi.load_pipeline(fixture_dir)
    trained, before = pipe.transformer.state_dict(), source.transformer.state_dict()
    assert set(trained) == set(before)
    assert any(not torch.equal(trained[k], before[k]) for k in trained)
