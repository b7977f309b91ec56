"""The web demo from a composed configs/serve.yaml (``tools/serve.py``).

``run(cfg)`` checks the config, loads ``cfg.checkpoint`` (or the newest ``final.pth``) into a
``Predictor``, builds the Flask app with the run's sample images and serves it with waitress on
``cfg.host``:``cfg.port`` until Ctrl-C. ``bind`` makes the server (a port in use is one line),
``megapixels_to_pixels`` turns ``max_megapixels`` into the app's inclusive pixel limit.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path

from omegaconf import DictConfig

from detector.modeling.spec import read_checkpoint
from detector.predict.inputs import printable
from detector.predict.predictor import Predictor, min_score_note
from detector.web import create_app, make_server, sample_images, server_url
from detector_cli.checks import ConfigError, check_serve_config
from detector_cli.cli import counted
from detector_cli.cli import resolve_checkpoint as cli_resolve_checkpoint

__all__ = ["bind", "megapixels_to_pixels", "resolve_checkpoint", "run", "server_url"]

log = logging.getLogger("serve")


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
    note = min_score_note(cfg.min_score, predictor.score_threshold)
    if note is not None:
        log.warning("%s", note)
    samples = sample_images(run_dataset, count=cfg.num_samples)
    app = create_app(predictor=predictor, max_upload_mb=cfg.max_upload_mb, samples=samples,
                     max_pixels=megapixels_to_pixels(cfg.max_megapixels),
                     min_score=cfg.min_score, display_min_score=cfg.display_min_score)
    server = bind(app, cfg)
    log.info("model %s (iteration %s, %s) on %s, %s", printable(path),
             predictor.info.get("iteration"),
             counted(len(predictor.class_names), "class", "classes"), predictor.device,
             counted(len(samples), "sample image"))
    print(f"serving the detector demo on {server_url(server)}  (Ctrl-C stops it)", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.close()
