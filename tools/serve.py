"""Web demo of a trained model: python tools/serve.py [checkpoint=PATH] [host=...] [port=...]

With no arguments: the newest outputs/**/checkpoints/final.pth, served by waitress on
http://127.0.0.1:8000/ (the page, and the JSON API: POST /api/detect, GET /api/model,
GET /api/health). See configs/serve.yaml for every key. Ctrl-C stops it.

The work is ``detector_cli.serve``; this file is its command line.
"""

from __future__ import annotations

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # read when torch loads (see tools/eval.py)

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from detector_cli.cli import check_command_line, exit_on_user_error  # noqa: E402
from detector_cli.serve import run  # noqa: E402


@hydra.main(config_path="../configs", config_name="serve", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        run(cfg)


if __name__ == "__main__":
    check_command_line("serve")  # a typo'd key: one line, exit code 2
    main()
