"""Web demo of a trained model: python tools/serve.py [checkpoint=PATH] [host=...] [port=...]

With no arguments: the newest outputs/**/checkpoints/final.pth, served by waitress on
http://127.0.0.1:8000/ (the page, and the JSON API: POST /api/detect, GET /api/model,
GET /api/health). See configs/serve.yaml for every key. Ctrl-C stops it.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # read when torch loads (see tools/eval.py)

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli import check_command_line, exit_on_user_error  # noqa: E402
from cli import resolve_checkpoint as cli_resolve_checkpoint  # noqa: E402
from config_checks import (  # noqa: E402, F401
    ConfigError,
    check_device,
    check_number,
    check_overrides,
    check_path,
    check_precision,
)

from detector.modeling.spec import read_checkpoint  # noqa: E402
from detector.predict.inputs import printable  # noqa: E402
from detector.predict.predictor import Predictor  # noqa: E402
from detector.web import create_app, make_server, sample_images, server_url  # noqa: E402

log = logging.getLogger("serve")


def check_serve_config(cfg: DictConfig) -> None:
    if not isinstance(cfg.port, int) or not 0 <= cfg.port <= 65535:
        raise ConfigError(f"port must be an integer in 0..65535 (0 = any free port), "
                          f"got {cfg.port!r}")
    for key, least in (("threads", 1), ("num_samples", 0)):
        value = cfg[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ConfigError(f"{key} must be an integer >= {least}, got {value!r}")
    for key in ("max_upload_mb", "max_megapixels"):
        check_number(cfg, key, low=0.0, low_open=True)
    for key in ("score_threshold", "display_threshold"):
        check_number(cfg, key, low=0.0, high=1.0)
    if not isinstance(cfg.host, str) or not cfg.host:
        raise ConfigError(f"host must be a host name or address, got {cfg.host!r}")
    for key in ("checkpoint", "outputs_root"):
        check_path(cfg, key)
    check_precision(cfg.precision)
    check_device(cfg.device)


def megapixels_to_pixels(megapixels: float) -> int:
    """The inclusive pixel limit: 4.1 -> 4100000 (``int(4.1 * 1e6)`` is 4099999)."""
    return int(round(megapixels * 1e6, 6))


def resolve_checkpoint(cfg: DictConfig) -> Path:
    return cli_resolve_checkpoint(cfg, hint="train one first (make train, or make demo which "
                                            "trains when needed)")


def bind(app, cfg: DictConfig):
    try:
        return make_server(app, host=cfg.host, port=cfg.port, threads=int(cfg.threads))
    except OSError as error:
        reason = ("the port is in use (pick another with port=...)"
                  if error.errno == errno.EADDRINUSE else error.strerror or str(error))
        raise ConfigError(f"cannot listen on {cfg.host}:{cfg.port}: {reason}") from None


def run(cfg: DictConfig) -> None:
    check_serve_config(cfg)
    path = resolve_checkpoint(cfg)
    run_dataset = read_checkpoint(path)["config"].get("dataset")  # refused unless plain data
    predictor = Predictor.from_checkpoint(path, device=cfg.device, precision=cfg.precision,
                                          batch_size=1)
    samples = sample_images(run_dataset, count=cfg.num_samples)
    app = create_app(predictor=predictor, max_upload_mb=cfg.max_upload_mb, samples=samples,
                     max_pixels=megapixels_to_pixels(cfg.max_megapixels),
                     score_threshold=cfg.score_threshold, display_threshold=cfg.display_threshold)
    server = bind(app, cfg)
    log.info("model %s (iteration %s, %d classes) on %s, %d sample images", printable(path),
             predictor.info.get("iteration"), len(predictor.class_names), predictor.device,
             len(samples))
    print(f"serving the detector demo on {server_url(server)}  (Ctrl-C stops it)", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.close()


@hydra.main(config_path="../configs", config_name="serve", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        run(cfg)


if __name__ == "__main__":
    check_command_line("serve")  # a typo'd key: one line, exit code 2
    main()
