"""Codec 3 (ECSQ + rANS, container format 3) through the Python package and the CLI: the ``codec`` and
``rans_lanes`` keywords, their checks, the report, and ``kvtc.inspect``'s format 3 fields.

A calibration made by ``kvtc calibrate`` carries ECSQ models (codec 3's quantiser); one made with
``--no-ecsq`` (or an old file) does not, and codec 3 must then fail with a message that says to
recalibrate.
"""
from __future__ import annotations

import json
import subprocess

import pytest
from safetensors import safe_open
from safetensors.torch import load_file

import kvtc

RATIO = 16


@pytest.fixture(scope="module")
def cli_cal_no_ecsq(kvtc_cli, files, tmp_path_factory):
    path = tmp_path_factory.mktemp("cal") / "no-ecsq.kvtcal"
    subprocess.run([str(kvtc_cli), "calibrate", "--no-ecsq", "-o", str(path), "--ratios", "8,16", str(files[0])],
                   check=True, capture_output=True)
    return path


def test_calibrate_learns_models_unless_told_not_to(cli_cal, cli_cal_no_ecsq):
    info = kvtc.inspect(cli_cal.read_bytes())
    assert "ecsq" in info["K"] and "ecsq" in info["V"]
    info = kvtc.inspect(cli_cal_no_ecsq.read_bytes())
    assert "ecsq" not in info["K"] and "ecsq" not in info["V"]


@pytest.fixture(scope="module")
def cache(files):
    tensors = load_file(str(files[1]))
    with safe_open(str(files[1]), "pt") as f:
        n = int(f.metadata()["num_layers"])
    return [tensors[f"k.{l}"] for l in range(n)], [tensors[f"v.{l}"] for l in range(n)]


def test_codec_2_is_the_default(cal, cache):
    keys, values = cache
    rep = {}
    data = kvtc.compress(cal, keys, values, RATIO, report=rep)
    assert data == kvtc.compress(cal, keys, values, RATIO, codec=2, rans_lanes=7)  # lanes: codec 3 only
    assert rep["codec"] == 2 and "ecsq_level" not in rep
    info = kvtc.inspect(data)
    assert info["format_version"] == 2
    assert "quantiser" not in info["streams"]["K"] and "coder" not in info["chunks"][0]


def test_codec_values_checked(cal, cache):
    keys, values = cache
    with pytest.raises(kvtc.InvalidArgumentError, match="codec must be 2 or 3"):
        kvtc.compress(cal, keys, values, RATIO, codec=4)
    with pytest.raises(kvtc.InvalidArgumentError, match="lanes"):
        kvtc.compress(cal, keys, values, RATIO, codec=3, rans_lanes=65)
    with pytest.raises(kvtc.InvalidArgumentError, match="codec must be 2 or 3"):
        kvtc.compress_block(cal, keys, values, 0, 64, RATIO, codec=1)


def test_codec_3_without_models_says_recalibrate(cli_cal_no_ecsq, cache):
    keys, values = cache
    with pytest.raises(kvtc.InvalidArgumentError, match="recalibrate"):
        kvtc.compress(kvtc.Calibration.load(cli_cal_no_ecsq), keys, values, RATIO, codec=3)


def test_codec_3(cal, cache):
    keys, values = cache
    rep = {}
    data = kvtc.compress(cal, keys, values, RATIO, codec=3, rans_lanes=8, report=rep)
    assert rep["codec"] == 3
    info = kvtc.inspect(data)
    assert info["format_version"] == 3
    for s in ("K", "V"):
        a = info["streams"][s]
        assert a["quantiser"] == "ecsq" and a["ecsq_level"] == rep["ecsq_level"][s]
        assert a["ecsq_n_kept"] == a["kept_components"] and len(a["ecsq_fingerprint"]) == 16
    assert {c["coder"] for c in info["chunks"] if c["kind"] == "codes"} == {"rans"}
    k, _ = kvtc.decompress(cal, data, dtype="float32")
    assert len(k) == len(keys)


def test_cli_codec_flags(kvtc_cli, cli_cal, cli_cal_no_ecsq, files, tmp_path):
    out = tmp_path / "c.kvtc"
    base = [str(kvtc_cli), "compress", "-c", str(cli_cal), "-r", str(RATIO), "-o", str(out), "--no-error"]
    r = subprocess.run(base + ["--json", str(files[1])], capture_output=True, text=True, check=True)
    assert json.loads(r.stdout)["codec"] == 2
    r = subprocess.run(base + ["--codec", "4", str(files[1])], capture_output=True, text=True)
    assert r.returncode == 1 and "codec must be 2 or 3" in r.stderr
    no_models = [str(kvtc_cli), "compress", "-c", str(cli_cal_no_ecsq), "-r", str(RATIO), "-o", str(out), "--no-error"]
    r = subprocess.run(no_models + ["--codec", "3", str(files[1])], capture_output=True, text=True)
    assert r.returncode == 1 and "recalibrate" in r.stderr, r.stderr
    r = subprocess.run(base + ["--codec", "3", "--rans-lanes", "16", "--json", str(files[1])], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["codec"] == 3 and set(rep["ecsq_level"]) == {"K", "V"}
    r = subprocess.run([str(kvtc_cli), "inspect", str(out)], capture_output=True, text=True, check=True)
    assert f"K: ECSQ level {rep['ecsq_level']['K']}," in r.stdout and " rans " in r.stdout


def test_cli_help_lists_codec(kvtc_cli):
    r = subprocess.run([str(kvtc_cli), "compress", "--help"], capture_output=True, text=True, check=True)
    assert "--codec" in r.stdout and "--rans-lanes" in r.stdout


def test_codec_3_with_token_importance(cal, cache):
    """Token classes (format 4): the most important quarter at a finer level, at the same target."""
    keys, values = cache
    n = keys[0].shape[1]
    importance = [float((t * 37) % 101) for t in range(n)]
    rep = {}
    data = kvtc.compress(cal, keys, values, 32, codec=3, token_importance=importance, report=rep)
    info = kvtc.inspect(data)
    assert info["format_version"] == 4
    assert rep["n_high_rate_tokens"] == round(0.25 * rep["n_compressed_tokens"])
    assert rep["ratio_compressed_tokens"] >= 32
    for s in ("K", "V"):
        assert info["streams"][s]["ecsq_level_high"] == rep["ecsq_level_high"][s] < rep["ecsq_level"][s]
    assert [c["kind"] for c in info["chunks"]].count("classes") == 1
    k, v = kvtc.decompress(cal, data, dtype="float32")
    assert len(k) == len(keys) and tuple(v[0].shape) == tuple(values[0].shape)
    # The same importance as a tensor gives the same bytes; wrong lengths and codec 2 are refused.
    import torch
    assert kvtc.compress(cal, keys, values, 32, codec=3, token_importance=torch.tensor(importance)) == data
    with pytest.raises(kvtc.InvalidArgumentError, match="token importance has"):
        kvtc.compress(cal, keys, values, 32, codec=3, token_importance=importance[:-1])
    with pytest.raises(kvtc.InvalidArgumentError, match="needs codec 3"):
        kvtc.compress(cal, keys, values, 32, codec=2, token_importance=importance)
