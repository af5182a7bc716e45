"""The stage scripts fail fast, with one clear line, before touching any output."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("stage", ["train", "generate", "compare"])
def test_bad_params_stop_the_stage_with_one_line(tmp_path, stage):
    (tmp_path / "params.yaml").write_text("latent_dim: 0\n")
    result = subprocess.run(
        [sys.executable, str(ROOT / "stages" / f"{stage}.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"{stage}: error: params.yaml: latent_dim = 0 is not allowed; expected an integer >= 1"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_download_without_any_reachable_source_explains_mnist_mirror(tmp_path):
    # The official mirrors go through a proxy on a closed loopback port: never the internet.
    result = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "download.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={
            "PATH": "",
            "MNIST_MIRROR": str(tmp_path / "empty"),
            "http_proxy": "http://127.0.0.1:9",
            "https_proxy": "http://127.0.0.1:9",
        },
    )
    assert result.returncode == 1
    assert "download: error: could not obtain a verified copy" in result.stderr
    assert str(tmp_path / "empty") in result.stderr and "MNIST_MIRROR" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data" / "mnist").exists()
