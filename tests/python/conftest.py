"""Shared paths for tests/python.

    KVTC_CLI         the kvtc binary (default: build/bin/kvtc under the repo root)
    KVTC_SHARED_DIR  the shared data folder (default: ../shared beside the repo root)
    KVTC_SMOLLM2_CAL a ready calibration of SmolLM2 for the smollm2_calibration fixture (default: made
                     once and kept in pytest's cache)
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # hf_reference

# torch's OpenMP workers spin after each parallel region by default, on the cores kvtc's OpenBLAS GEMMs
# then want: with both in one process (KVTCCache restores a layer between two of the model's layers),
# PASSIVE took test_kvtc_cache_generation[cpu-8] from 81 to 50 s on 2 cores (docs/PYTHON.md, "Threads
# beside PyTorch on the CPU"). libgomp reads it once, when torch loads, so it is set before any test
# module imports torch; the vLLM engines' processes inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _from_repo(p: str) -> Path:
    path = Path(p)
    return path if path.is_absolute() else REPO / path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    d = _from_repo(os.environ.get("KVTC_SHARED_DIR", "../shared")).resolve()
    if not d.is_dir():
        pytest.fail(f"shared folder {d} not found (set KVTC_SHARED_DIR)")
    return d


@pytest.fixture(scope="session")
def kvtc_cli() -> Path:
    cli = _from_repo(os.environ.get("KVTC_CLI", "build/bin/kvtc"))
    if not (cli.is_file() and os.access(cli, os.X_OK)):
        pytest.fail(f"kvtc CLI {cli} not found or not executable: build it (scripts/test.sh, or "
                    f"cmake -S . -B build && cmake --build build) or set KVTC_CLI")
    return cli


@pytest.fixture(scope="module")
def files(repo_root) -> tuple[Path, Path]:
    """The repository's small real caches: (data/small-calib.safetensors, data/small-test.safetensors)."""
    return repo_root / "data" / "small-calib.safetensors", repo_root / "data" / "small-test.safetensors"


@pytest.fixture(scope="module")
def cli_cal(kvtc_cli, files, tmp_path_factory) -> Path:
    """A calibration of files[0] by `kvtc calibrate --ratios 8,16` (with its ECSQ models), as a .kvtcal path."""
    path = tmp_path_factory.mktemp("cal") / "small.kvtcal"
    subprocess.run([str(kvtc_cli), "calibrate", "-o", str(path), "--ratios", "8,16", str(files[0])], check=True,
                   capture_output=True)
    return path


@pytest.fixture(scope="module")
def cal(cli_cal):
    """cli_cal loaded by the Python package (kvtc.Calibration)."""
    import kvtc

    return kvtc.Calibration.load(cli_cal)


def model_path(name: str) -> Path:
    """models/<name>, installed by scripts/models.sh when absent; skips the test only when the file
    is absent and cannot be installed."""
    path = REPO / "models" / name
    if path.is_file():
        return path
    r = subprocess.run([str(REPO / "scripts" / "models.sh")], cwd=REPO, capture_output=True, text=True)
    if path.is_file():
        return path
    pytest.skip(f"model {path} absent and scripts/models.sh could not install it "
                f"(exit {r.returncode}): {(r.stderr or r.stdout).strip()[-500:]}")


@pytest.fixture(scope="session")
def smollm2_calibration(request, shared_dir) -> Path:
    """A calibration of SmolLM2-135M-Instruct by kvtc.hf.calibrate (12 documents of the valid split, at
    most 1,024 tokens each, ratios 8 and 16). Made once and kept in pytest's cache folder under a key of
    the built extension, kvtc.hf and the model file, so a rebuild makes it again. KVTC_SMOLLM2_CAL names
    one made elsewhere the same way (tests/python/smollm2_common.py as a script, e.g. from the model on
    a GPU), used as it is."""
    import kvtc
    import torch
    from transformers import AutoTokenizer

    from hf_reference import load_model
    from smollm2_common import MODEL, calibrate, calibration_key

    given = os.environ.get("KVTC_SMOLLM2_CAL")
    if given:
        if not Path(given).is_file():
            pytest.fail(f"KVTC_SMOLLM2_CAL={given}: no such file")
        return Path(given)
    gguf = model_path(MODEL)
    folder = Path(request.config.cache.mkdir("kvtc-smollm2"))
    path = folder / f"cal-{calibration_key(kvtc, gguf)}.kvtcal"
    if not path.is_file():
        torch.set_num_threads(2)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        cal = calibrate(load_model(str(gguf)), tok, shared_dir)
        tmp = path.with_suffix(".partial")
        cal.save(tmp)
        tmp.rename(path)
    return path


@contextlib.contextmanager
def redis_server(directory: Path, timeout_s: float = 10):
    """A redis-server of the caller's own on a unix socket in `directory` (--port 0 --save "" --appendonly no,
    its log in directory/redis.log), once it answers PING; killed on exit. Yields the socket's path.
    Fails the test if redis-server is missing or does not answer within timeout_s."""
    binary = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK)
                                              else None)
    if binary is None:
        pytest.fail("redis-server not found on PATH or in /usr/bin: run scripts/install_deps.sh")
    sock, log = directory / "redis.sock", directory / "redis.log"
    proc = subprocess.Popen([binary, "--port", "0", "--unixsocket", str(sock), "--save", "", "--appendonly", "no",
                             "--dir", str(directory), "--logfile", str(log)])
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(sock))
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server did not answer within {timeout_s:g} s:\n" +
                            (log.read_text()[-2000:] if log.exists() else ""))
            time.sleep(0.02)
        yield str(sock)
    finally:
        proc.kill()
        proc.wait()
