"""scripts/train.py's user errors: one line, exit code 2, before any weights load."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("lightning")

from ruyi.training.run import run  # noqa: E402
from tests.test_train import train_config  # noqa: E402


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["finetune.rank=0"], "finetune.rank=0 must be a positive integer"),
        (["finetune.target_modules=[]"], "target_modules must be a non-empty list"),
        (["data=folder", "data.path=/no/such/clips"], "data.path=/no/such/clips is not a folder"),
        (["data.split=test"], "data.split='test'"),
        (["trainer.logger=wandb"], "trainer.logger='wandb'"),
        (["schedule=linear"], "schedule='linear'"),
    ],
)
def test_bad_options_fail_with_one_line(fixture_dir, tmp_path, capsys, overrides, message):
    small_data = not any(o.startswith("data=") for o in overrides)
    assert run(train_config(fixture_dir, tmp_path / "run", *overrides, small_data=small_data)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_fsdp_without_a_gpu_fails_before_any_weights(tmp_path, capsys):
    # the checkpoint does not exist: reaching the weights would be a different error
    cfg = train_config(tmp_path / "missing-checkpoint", tmp_path / "run", "model=ruyi_mini_7b", "trainer=fsdp",
                       "trainer.accelerator=auto")  # fmt: skip
    assert run(cfg) == 2
    assert "trainer=fsdp shards the model over CUDA GPUs" in capsys.readouterr().err


def test_an_earlier_run_is_never_overwritten(fixture_dir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "lora.safetensors").write_bytes(b"mine")
    assert run(train_config(fixture_dir, out)) == 2
    assert "already holds lora.safetensors" in capsys.readouterr().err
    assert (out / "lora.safetensors").read_bytes() == b"mine"


def test_trainer_groups_compose(fixture_dir, tmp_path):
    ddp = train_config(fixture_dir, tmp_path, "trainer=ddp")
    assert ddp.trainer.strategy.name == "ddp" and ddp.trainer.max_steps == 1000
    fsdp = train_config(fixture_dir, tmp_path, "trainer=fsdp")
    assert fsdp.trainer.strategy.auto_wrap == ["ruyi.models.transformer.RuyiDiTBlock"]
    assert fsdp.trainer.precision == "bf16-mixed" and fsdp.trainer.strategy.state_dict_type == "full"


def test_the_experiment_overlay_wins_over_train_yaml(fixture_dir, tmp_path):
    cfg = train_config(fixture_dir, tmp_path, "experiment=tiny_pans")
    assert (cfg.learning_rate, cfg.schedule, cfg.weight_decay, cfg.timestep_shift) == (2e-3, "cosine", 0.01, 3.0)
    assert cfg.model.transformer_arch.patch_size == 1  # batch_size: the test helper shrinks it
    assert (cfg.data.frames, cfg.data.height, cfg.data.width) == (8, 64, 64)  # the size the model was made at
    assert cfg.trainer.max_steps == 3527 and cfg.steps_for_time is None
    assert cfg.model.name == "ruyi-tiny-pans" and cfg.finetune._target_.endswith("FullFinetune")
    assert cfg.model.path == f"{fixture_dir}"  # a command-line override still wins over the overlay


@pytest.mark.parametrize("module_name", ["ruyi.training.run", "ruyi.cli"])
def test_out_of_gpu_memory_is_one_line_with_what_to_change(module_name, monkeypatch, capsys):
    import importlib

    module = importlib.import_module(module_name)

    def oom(cfg, *watch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(module, "_run", oom)
    assert module.run(None) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: out of GPU memory;") and "\n" not in err
    assert ("gradient_checkpointing=true" if module_name.endswith("run") else "memory=auto") in err


def test_data_workers_default_to_the_cores_this_process_may_use(monkeypatch):
    import os

    from ruyi.training.run import data_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)), raising=False)
    assert data_workers("auto") == 5  # one core left to the training loop
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert data_workers("auto") == 16
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert data_workers("auto") == 0
    assert data_workers(3) == 3
