"""Fine-tuning: ``python scripts/train.py [key=value ...]`` (see configs/train.yaml)."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from ruyi.help import print_help_if_asked  # noqa: E402
from ruyi.overrides import exit_on_bad_overrides  # noqa: E402
from ruyi.training.outputs import register_resolvers  # noqa: E402

@hydra.main(version_base=None, config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> None:
    from ruyi.training.run import run  # after the override check: torch and lightning take seconds to import

    code = run(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    print_help_if_asked(sys.argv[1:], config_dir=REPO / "configs", config_name="train", script="scripts/train.py")
    register_resolvers()  # ${ruyi_run:}: the default output_dir, unique per run
    try:
        # unknown keys (trainer.max_step=3), unknown group options: one line, exit 2, before Hydra runs
        exit_on_bad_overrides(sys.argv[1:], config_dir=REPO / "configs", config_name="train")
        main()
    except KeyboardInterrupt:  # before the run began (imports, Hydra): nothing was written yet
        print("interrupted; nothing was written", file=sys.stderr)
        sys.exit(130)
