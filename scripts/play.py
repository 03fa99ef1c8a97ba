"""Watch a checkpoint act in a browser: `python scripts/play.py checkpoint=PATH`.

Thin hydra entry point (conf/play.yaml); the page is policy/playground/app.py, an episode
policy/playground/session.py. Needs the `play` extra (`pip install -e ".[play]"`, or
`make play`). Serves until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import logging
import signal
import sys

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from envs.spec import EVAL_SEED_START
from policy.playground.config import PlayServerConfig


@hydra.main(config_path="../conf", config_name="play", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger().setLevel(cfg.log_level)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio polls its own server
    # Refuse a bad address (or a missing token) before the slow model load.
    server: PlayServerConfig = instantiate(cfg.server)
    try:
        import gradio  # noqa: F401
    except ImportError:
        sys.exit('scripts/play.py needs the "play" extra: pip install -e ".[play]" '
                 "(or run make play)")
    from policy.playground.app import Playground, launch
    from policy.playground.session import POLICY, SECOND, load_checkpoint

    checkpoints = {POLICY: load_checkpoint(cfg.checkpoint, server.torch_threads)}
    if cfg.second_checkpoint:
        checkpoints[SECOND] = load_checkpoint(cfg.second_checkpoint, server.torch_threads)
    play = Playground(checkpoints, task=cfg.task, split=cfg.split,
                      seed=EVAL_SEED_START if cfg.seed is None else int(cfg.seed),
                      view=instantiate(cfg.view), dataset=cfg.dataset,
                      max_sessions=server.max_sessions, control_hz=cfg.control_hz)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # closes like Ctrl-C
    app = None
    try:
        app, url = launch(play, server)
        print(f"robotok playground on {url}", flush=True)
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        if app is not None:
            app.close()
        play.close_all()


if __name__ == "__main__":
    main()
