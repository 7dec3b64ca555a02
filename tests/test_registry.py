"""The registry mechanism and its Hydra wiring."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, instantiate

from ruyi.registry import ALL_REGISTRIES, SAMPLERS, Registry

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PLUGIN_CONFIGS = Path(__file__).resolve().parent / "dummy_plugin" / "configs"
KIND_DIRS = {kind: CONFIGS / kind for kind in ALL_REGISTRIES}
TRAIN_GROUPS = ("finetune", "data")  # registry kinds that only configs/train.yaml selects
# plugins are chosen as a list (plugin=[teacache,enhance_a_video]): configs/plugin/<name>.yaml holds
# each one's node under its name; lora is also a plain list key. Metrics are chosen as a list of names
# too (ruyi eval --metrics), each with its configs/metric/<name>.yaml
GROUP_DIRS = {kind: d for kind, d in KIND_DIRS.items() if kind not in ("metric",)}
NESTED = ("plugin",)  # groups whose YAML nests its node under the option's name


def test_register_get_and_names():
    reg: Registry[type] = Registry("widget")

    @reg.register("a")
    class A:
        pass

    assert reg.get("a") is A and A.registry_name == "a" and "a" in reg and reg.names() == ["a"]


def test_duplicate_name_is_rejected():
    reg: Registry[type] = Registry("widget")
    reg.register("a")(type("A", (), {}))
    with pytest.raises(KeyError, match="already registered"):
        reg.register("a")(type("B", (), {}))


def test_unknown_name_lists_valid_ones():
    reg: Registry[type] = Registry("widget")
    reg.register("alpha")(type("A", (), {}))
    reg.register("beta")(type("B", (), {}))
    with pytest.raises(KeyError, match="unknown widget 'gamma'; valid names: alpha, beta"):
        reg.get("gamma")


def _yaml_targets() -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for kind, folder in KIND_DIRS.items():
        nodes = {p.stem: yaml.safe_load(p.read_text()) for p in sorted(folder.rglob("*.yaml"))}
        out[kind] = {stem: (node[stem] if kind in NESTED else node)["_target_"] for stem, node in nodes.items()}
    return out


def test_every_yaml_points_at_its_registered_class():
    for kind, targets in _yaml_targets().items():
        assert targets, f"configs/{kind}/ has no YAML"
        for stem, target in targets.items():
            cls = get_class(target)
            assert ALL_REGISTRIES[kind].get(stem) is cls, f"configs/{kind}/{stem}.yaml -> {target} is not {kind} {stem!r}"


def test_every_registered_class_has_a_yaml():
    targets = _yaml_targets()
    for kind, registry in ALL_REGISTRIES.items():
        builtin = [n for n in registry.names() if registry.get(n).__module__.startswith("ruyi.")]
        missing = sorted(set(builtin) - set(targets[kind]))
        assert not missing, f"registered {kind}(s) without configs/{kind}/<name>.yaml: {missing}"


def test_a_new_component_is_one_file_and_one_yaml(fixture_dir):
    """A sampler from a test module is selected through Hydra compose with no edit to ruyi/."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(
            config_name="infer",
            overrides=[f"hydra.searchpath=[file://{PLUGIN_CONFIGS}]", "sampler=dummy_ddim"],
        )
    from ruyi.models.loading import read_config

    sampler = instantiate(cfg.sampler, scheduler_config=read_config(fixture_dir / "scheduler", "scheduler_config.json"))
    assert type(sampler).__name__ == "DummySampler" and sampler.marker == "from-yaml"
    assert SAMPLERS.get("dummy_ddim") is type(sampler)
    assert sampler.set_timesteps(4).tolist() == [751, 501, 251, 1]


def test_configs_compose_for_every_group_choice():
    """Every YAML of every group composes with the main config (catches typos in defaults)."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        for folder in GROUP_DIRS.values():
            for path in folder.rglob("*.yaml"):
                group = str(path.parent.relative_to(CONFIGS))
                main, extra = ("train", ["output_dir=unused"]) if group in TRAIN_GROUPS else ("infer", [])
                choice = f"{group}=[{path.stem}]" if group in NESTED else f"{group}={path.stem}"
                cfg = compose(config_name=main, overrides=[choice, *extra])
                node = cfg
                for part in group.split("/"):
                    node = node[part]
                node = node[path.stem] if group in NESTED else node
                assert node["_target_"], choice
        for preset in (CONFIGS / "model").glob("*.yaml"):
            cfg = compose(config_name="infer", overrides=[f"model={preset.stem}"])
            assert cfg.frames == cfg.model.run.frames and cfg.model.path
