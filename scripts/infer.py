"""Image-to-video inference: ``python scripts/infer.py [key=value ...]`` (see configs/infer.yaml)."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from ruyi.help import print_help_if_asked  # noqa: E402
from ruyi.overrides import exit_on_bad_overrides  # noqa: E402

INTERRUPTED = (130, 143)  # exit codes of Ctrl-C and SIGTERM
FAILED: list[int] = []  # exit codes of failed jobs: a multirun goes on after one, then exits non-zero


@hydra.main(version_base=None, config_path="../configs", config_name="infer")
def main(cfg: DictConfig) -> None:
    from ruyi.cli import run  # after the override check: importing torch and diffusers takes seconds

    code = run(cfg)
    if code in INTERRUPTED:  # Ctrl-C or SIGTERM ends a sweep too, not just its current job
        sys.exit(code)
    if code:
        FAILED.append(code)


if __name__ == "__main__":
    print_help_if_asked(sys.argv[1:], config_dir=REPO / "configs", config_name="infer", script="scripts/infer.py")
    try:
        exit_on_bad_overrides(sys.argv[1:], config_dir=REPO / "configs", config_name="infer")
        from ruyi.multirun import prepare

        # once, before any job: bad eval.* values, videos an earlier sweep made; jobs named by swept values
        sys.argv += prepare(sys.argv[1:], config_dir=REPO / "configs", config_name="infer")
        main()
    except KeyboardInterrupt:  # before the run began (imports, Hydra): nothing was written yet
        print("interrupted; nothing was written", file=sys.stderr)
        sys.exit(130)
    sys.exit(max(FAILED, default=0))
