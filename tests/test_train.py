"""Training on the random parity checkpoint: the objective, the inputs, LoRA and full exports.

Each run is a few CPU steps on 8 frames of 64 x 64; the oracles are the scheduler's closed form,
the pipeline's own inference code, and peft's own effective weights.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

pytest.importorskip("lightning")
pytest.importorskip("peft")

from ruyi.pipeline import GenerationRequest  # noqa: E402
from ruyi.plugins import LoRAWeights  # noqa: E402
from ruyi.training.objective import DiffusionObjective  # noqa: E402
from ruyi.training.run import build_run  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SMALL_DATA = ["data.frames=8", "data.height=64", "data.width=64"]
SMALL = [
    "batch_size=2", "num_workers=0",
    "trainer.accelerator=cpu", "trainer.logger=none", "trainer.checkpoint_every_n_steps=null",
    "trainer.progress_refresh_rate=0", "+trainer.enable_model_summary=false", "warmup_steps=0",
]  # fmt: skip


def train_config(fixture_dir: Path, output_dir: Path, *overrides: str, small_data: bool = True):
    """The real configs/train.yaml, shrunk for the CPU and pointed at the parity checkpoint (the
    random ``ruyi_tiny``; train.yaml's default model is the shipped ``ruyi_tiny_pans``)."""
    small = [*SMALL, *(SMALL_DATA if small_data else ())]
    model = [] if any(o.startswith(("model=", "experiment=")) for o in overrides) else ["model=ruyi_tiny"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose("train", overrides=[*model, f"model.path={fixture_dir}", f"output_dir={output_dir}", *small, *overrides])


# -- the objective ---------------------------------------------------------------------------
def test_v_prediction_target_matches_the_closed_form_and_the_scheduler(fixture_dir):
    import json

    from diffusers import DDPMScheduler

    config = json.loads((fixture_dir / "scheduler" / "scheduler_config.json").read_text())
    objective = DiffusionObjective(config)
    assert objective.prediction_type == "v_prediction" and objective.num_train_timesteps == 1000
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 16, 2, 4, 4, generator=g), torch.randn(3, 16, 2, 4, 4, generator=g)
    t = torch.tensor([0, 421, 999])
    noisy, target = objective.noisy_and_target(x0, noise, t)
    # scaled-linear betas 0.00085 -> 0.03 over 1000 steps, written out independently
    betas = torch.linspace(math.sqrt(0.00085), math.sqrt(0.03), 1000, dtype=torch.float64) ** 2
    alpha_bar = torch.cumprod(1 - betas, 0)[t].float().view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(noisy, alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(target, alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0, rtol=1e-5, atol=1e-5)
    scheduler = DDPMScheduler.from_config(config)
    torch.testing.assert_close(noisy, scheduler.add_noise(x0, noise, t))
    torch.testing.assert_close(target, scheduler.get_velocity(x0, noise, t))


def test_loss_reads_only_the_predicted_half():
    target = torch.zeros(2, 16, 1, 2, 2)
    prediction = torch.cat([torch.full_like(target, 0.5), torch.full_like(target, 100.0)], dim=1)
    assert DiffusionObjective.loss(prediction, target).item() == pytest.approx(0.25)




def test_per_sample_loss_gives_each_clip_its_own_mse():
    target = torch.zeros(2, 16, 1, 2, 2)
    half = torch.stack([torch.full((16, 1, 2, 2), 0.5), torch.full((16, 1, 2, 2), 1.0)])
    prediction = torch.cat([half, torch.full_like(half, 100.0)], dim=1)
    per_clip = DiffusionObjective.loss(prediction, target, per_sample=True)
    assert per_clip.tolist() == pytest.approx([0.25, 1.0])
    assert DiffusionObjective.loss(prediction, target).item() == pytest.approx(0.625)


SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.03, "beta_schedule": "scaled_linear",
            "prediction_type": "v_prediction"}  # fmt: skip


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_timestep_shift_moves_the_share_of_noisy_timesteps(shift):
    """P(t >= 850) of s u / (1 + (s - 1) u) with u ~ U(0, 1) is 1 - 0.85 / (0.85 + 0.15 s): 0.15 uniform, 0.346 at s = 3."""
    t = DiffusionObjective(SCHEDULE, timestep_shift=shift).sample_timesteps(40_000, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and int(t.min()) >= 0 and int(t.max()) <= 999
    expected = 1 - 0.85 / (0.85 + 0.15 * shift)
    assert float((t >= 850).float().mean()) == pytest.approx(expected, abs=0.012)


def test_timestep_shift_must_be_positive(fixture_dir, tmp_path):
    from ruyi.errors import ConfigError

    with pytest.raises(ConfigError, match="timestep_shift"):
        DiffusionObjective(SCHEDULE, timestep_shift=0)
    with pytest.raises(ConfigError, match="timestep_shift"):
        build_run(train_config(fixture_dir, tmp_path / "run", "timestep_shift=-1"))
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())

# -- the inputs ------------------------------------------------------------------------------
def test_training_inputs_are_built_as_inference_builds_them(fixture_dir, tmp_path):
    job = build_run(train_config(fixture_dir, tmp_path / "run", "uncond_prob=0"))
    module, clips = job.module, job.data.dataset
    pipe = module.pipe
    batch = job.data.train_dataloader().collate_fn([clips[0], clips[1]])
    encoded = module.encoder.encode(batch)
    for row in range(2):
        start = batch["video"][row, :, 0].permute(1, 2, 0).numpy()
        request = GenerationRequest(frames=8, height=64, width=64, steps=5, guidance_scale=1.0, seed=0,
                                    camera=batch["camera"][row], motion=batch["motion"][row])  # fmt: skip
        reference = pipe.encode_images(start, None, request)
        # float32 through the random MagViT, batch of 2 vs batch of 1: CPU convolutions may differ by ~1e-5
        torch.testing.assert_close(encoded.inpaint[row : row + 1], reference.inpaint_latents, rtol=1e-4, atol=5e-5)
        torch.testing.assert_close(encoded.clip[row : row + 1], reference.clip_features, rtol=1e-4, atol=5e-5)
    clean = pipe.vae.encode(batch["video"].float() / 255 * 2 - 1)[0] * pipe.vae.scaling_factor
    torch.testing.assert_close(encoded.x0, clean, rtol=1e-5, atol=1e-5)

    # conditioned rows get their control embedding; CLIP only below clip_apply_ratio * 1000
    kwargs = module.encoder.transformer_kwargs(encoded, batch, torch.tensor([100, 900]), 1000)
    for row in range(2):
        wanted = pipe.control.select(batch["camera"][row], batch["motion"][row]).positive
        assert torch.equal(kwargs["encoder_hidden_states"][row], wanted.emb1[0])
        assert torch.equal(kwargs["text_embedding_mask_t5"][row], wanted.mask2[0])
    assert kwargs["clip_attention_mask"][:, 0].tolist() == [1.0, 0.0]
    assert kwargs["clip_encoder_hidden_states"][1].abs().sum() == 0


def test_clip_pixels_made_by_the_workers_equal_the_encoders_own_preprocessing(fixture_dir, tmp_path):
    """The DataLoader items carry the CLIP input; encoding with it and without it (the image
    encoder then preprocesses the batch itself, as inference does) gives the same features."""
    job = build_run(train_config(fixture_dir, tmp_path / "run"))
    clips, encoder = job.data.dataset, job.module.encoder
    batch = job.data.train_dataloader().collate_fn([clips[0], clips[1]])
    assert batch["clip_pixels"].shape == (2, 3, 32, 32)
    with_pixels = encoder.encode(batch)
    without = encoder.encode({k: v for k, v in batch.items() if k != "clip_pixels"})
    assert torch.equal(with_pixels.clip, without.clip) and with_pixels.clip.abs().sum() > 0


def test_mixed_labels_get_their_own_branch_row_by_row(fixture_dir, tmp_path):
    """Rows of different cameras and motions, some with the conditioning dropped: every row holds
    its own label's positive embedding, or the negative one where it was dropped (CLIP off there)."""
    job = build_run(train_config(fixture_dir, tmp_path / "run", "uncond_prob=0.5"))
    encoder, pipe = job.module.encoder, job.module.pipe
    batch = job.data.train_dataloader().collate_fn([job.data.dataset[i] for i in range(12)])
    batch["camera"] = ["left", "right", "up", "down", "static", "auto"] * 2
    batch["motion"] = ["1", "2", "3", "4", "auto", "2"] * 2
    torch.manual_seed(3)
    kwargs = encoder.transformer_kwargs(encoder.encode(batch), batch, torch.full((12,), 10), 1000)
    dropped = kwargs["clip_attention_mask"][:, 0] == 0  # t = 10 < clip_apply_ratio * 1000: CLIP on unless dropped
    assert 0 < int(dropped.sum()) < 12, "both branches must occur for the test to mean anything"
    argument = {"emb1": "encoder_hidden_states", "mask1": "text_embedding_mask",
                "emb2": "encoder_hidden_states_t5", "mask2": "text_embedding_mask_t5"}  # fmt: skip
    for row in range(12):
        control = pipe.control.select(batch["camera"][row], batch["motion"][row])
        wanted = control.negative if dropped[row] else control.positive
        for field, name in argument.items():
            assert torch.equal(kwargs[name][row], getattr(wanted, field)[0]), (row, field)
    positives = {pipe.control.select(c, m).positive.emb1.sum().item() for c, m in zip(batch["camera"][:6], batch["motion"][:6])}
    assert len(positives) > 1, "the labels must select different embeddings for the test to mean anything"


def test_dropped_conditioning_is_the_negative_branch(fixture_dir, tmp_path):
    job = build_run(train_config(fixture_dir, tmp_path / "run", "uncond_prob=1"))
    module, clips = job.module, job.data.dataset
    batch = job.data.train_dataloader().collate_fn([clips[0]])
    kwargs = module.encoder.transformer_kwargs(module.encoder.encode(batch), batch, torch.tensor([10]), 1000)
    negative = module.pipe.control.select(batch["camera"][0], batch["motion"][0]).negative
    assert torch.equal(kwargs["encoder_hidden_states"][0], negative.emb1[0])
    assert kwargs["clip_attention_mask"].sum() == 0  # no image for the unconditional branch


# -- LoRA ------------------------------------------------------------------------------------
def test_lora_export_merges_to_peft_effective_weights(fixture_dir, tmp_path):
    from peft.tuners.lora import LoraLayer

    out = tmp_path / "run"
    job = build_run(train_config(
        fixture_dir, out, "finetune.rank=4", "finetune.alpha=8", "learning_rate=1e-2", "trainer.max_steps=3",
    ))  # fmt: skip
    job.fit()
    exported = job.export()
    assert exported == out / "lora.safetensors"

    peft_layers = {n: m for n, m in job.module.transformer.named_modules() if isinstance(m, LoraLayer)}
    blocks = len(job.module.transformer.blocks)
    # 3 attentions x (q, k, v, out) + 2 feed-forward linears in every block, nothing else
    assert len(peft_layers) == blocks * 14 and all(n.startswith("blocks.") for n in peft_layers)
    tensors = load_file(str(exported))
    assert len(tensors) == 3 * len(peft_layers)
    key = "lora_unet_blocks_0_attn1_to_q"
    assert tensors[f"{key}.alpha"].item() == 8.0 and tensors[f"{key}.lora_down.weight"].shape[0] == 4

    import ruyi

    fresh = ruyi.load_pipeline(fixture_dir)
    LoRAWeights(path=exported, strength=1.0).apply(fresh)
    merged = dict(fresh.transformer.named_modules())
    changed = 0
    for name, layer in peft_layers.items():
        effective = layer.base_layer.weight + layer.get_delta_weight("default")
        torch.testing.assert_close(merged[name].weight, effective, rtol=0, atol=1e-6)
        changed += int(not torch.equal(effective, layer.base_layer.weight))
    assert changed == len(peft_layers), "training left some LoRA layers at zero: the comparison would prove nothing"

    # the merged plain model computes what the trained peft model computes
    batch = job.data.train_dataloader().collate_fn([job.data.dataset[0]])
    job.module.transformer.eval()
    encoded = job.module.encoder.encode(batch)
    kwargs = job.module.encoder.transformer_kwargs(encoded, batch, torch.tensor([300]), 1000)
    noisy = torch.randn_like(encoded.x0)
    with torch.no_grad():
        live = job.module.transformer(noisy, torch.tensor([300.0]), **kwargs)
        plain = fresh.transformer(noisy, torch.tensor([300.0]), **kwargs)
    torch.testing.assert_close(plain, live, rtol=1e-4, atol=1e-5)


# -- full fine-tuning ------------------------------------------------------------------------
def test_full_finetune_exports_a_checkpoint_model_path_loads(fixture_dir, tmp_path):
    import ruyi

    out = tmp_path / "run"
    job = build_run(train_config(fixture_dir, out, "finetune=full", "learning_rate=1e-3", "trainer.max_steps=2"))
    before = {k: v.clone() for k, v in job.module.transformer.state_dict().items()}
    job.fit()
    folder = job.export()
    assert folder == out / "checkpoint"
    loaded = ruyi.load_pipeline(folder)
    trained = job.module.transformer.state_dict()
    assert set(loaded.transformer.state_dict()) == set(trained)
    for k, v in loaded.transformer.state_dict().items():
        torch.testing.assert_close(v, trained[k].to(v.dtype), rtol=0, atol=0)
    assert any(not torch.equal(before[k], trained[k]) for k in trained)
    for part in ("vae/diffusion_pytorch_model.safetensors", "embeddings.safetensors", "scheduler/scheduler_config.json"):
        assert (folder / part).read_bytes() == (fixture_dir / part).read_bytes()


# -- schedule --------------------------------------------------------------------------------
def test_a_time_budget_becomes_a_fixed_step_count(fixture_dir, tmp_path, monkeypatch):
    from types import SimpleNamespace

    import ruyi.training.module as module_file
    from ruyi.training.module import seconds

    assert seconds("00:01:02:03") == 3723.0 and seconds({"minutes": 2}) == 120.0 and seconds(None) is None
    job = build_run(train_config(fixture_dir, tmp_path / "run", "steps_for_time=00:00:03:20", "trainer.max_steps=100000"))
    module = job.module
    loop = SimpleNamespace(max_steps=100000)
    trainer = SimpleNamespace(fit_loop=SimpleNamespace(epoch_loop=loop))
    monkeypatch.setattr(type(module), "trainer", property(lambda self: SimpleNamespace(**vars(trainer), max_steps=loop.max_steps)))
    clock = {"now": 0.0}
    monkeypatch.setattr(module_file.time, "monotonic", lambda: clock["now"])
    for step in range(1, 101):  # 1 step/s; at step 100, 99 s of the 200 s budget are gone
        monkeypatch.setattr(type(module), "global_step", property(lambda self, s=step: s))
        clock["now"] = float(step)
        module.on_train_batch_end(None, None, step)
    assert loop.max_steps == 100 + 92  # 101 s left at 1 step/s, with the 8 % margin


def test_gradient_checkpointing_gives_the_same_lora_gradients(fixture_dir, tmp_path):
    grads = []
    for checkpointing in ("false", "true"):
        job = build_run(train_config(fixture_dir, tmp_path / checkpointing, f"gradient_checkpointing={checkpointing}",
                                     "finetune.rank=2"))  # fmt: skip
        module = job.module
        module.on_fit_start()
        batch = job.data.train_dataloader().collate_fn([job.data.dataset[0], job.data.dataset[1]])
        torch.manual_seed(5)
        module.training_step(batch, 0).backward()
        grads.append({n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    assert all(g.abs().sum() > 0 for n, g in grads[0].items() if ".lora_B." in n)  # (A gets none while B is 0)
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-7)
