"""Bad configuration values: each is refused at start with one line naming the variable,
in process and under ``bytewax.run``, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dataflows.segment import build_flow
from tests.flow_fixtures import env_for, make_blob, make_clip
from operators.config import ENV_DOC, ConfigError, load_config


REPO = Path(__file__).resolve().parents[2]


BAD_CONFIG = [
    # (variable, value, what the line must say)
    ("VERISEG_SOURCE", " ; ", "expected at least one source"),
    ("VERISEG_SOURCE", "dir:/nonexistent/frames", "image folder '/nonexistent/frames' does not exist"),
    ("VERISEG_SOURCE", "csv:/nonexistent/f.csv", "CSV file '/nonexistent/f.csv' does not exist"),
    ("VERISEG_SOURCE", "/nonexistent/clip.avi", "video file '/nonexistent/clip.avi' does not exist"),
    ("VERISEG_SOURCE", "dir:", "needs a value after the prefix"),
    ("VERISEG_MODEL", "/nonexistent/m.vsb", "blob file '/nonexistent/m.vsb' does not exist"),
    ("VERISEG_MODEL", "name with spaces!", "expected a .vsb path or a deployment name"),
    ("VERISEG_DECRYPT_KEY", "/nonexistent/key", "secret file '/nonexistent/key' does not exist"),
    ("VERISEG_CHAIN", "ftp://node", "expected 'embedded' or an http(s):// JSON-RPC URL"),
    ("VERISEG_REGISTRY", "0x1234", "expected a contract address 0x + 40 hex digits"),
    ("VERISEG_PROVIDERS", "gpu", "expected auto, tensorrt, cuda or cpu"),
    ("VERISEG_BACKEND", "tensorflow", "expected auto, openvino or onnxruntime"),
    ("VERISEG_WEB", "99999", "expected [HOST:]PORT"),
    ("VERISEG_WEB", "my host!:80", "expected [HOST:]PORT"),
    ("VERISEG_WEB", "0.0.0.0:8080", "set VERISEG_WEB_TOKEN"),
    ("VERISEG_WEB_TOKEN", "short", "expected at least 16 characters"),
    ("VERISEG_KEYFILE", "/nonexistent/key.json", "key file '/nonexistent/key.json' does not exist"),
    ("VERISEG_SOLCJS", "/nonexistent/solcjs", "neither an executable file nor a command"),
    ("VERISEG_REQUIRE_GPU", "2", "expected 1/0"),
    ("VERISEG_THREADS", "-1", "expected a whole number in 0..1024"),
    ("VERISEG_THREADS", "1e9", "expected a whole number, got '1e9'"),
    ("VERISEG_BATCH", "0", "expected a whole number in 1..256"),
    ("VERISEG_BATCH", "100000", "expected a whole number in 1..256"),
    ("VERISEG_LOOP", "sometimes", "expected 1/0"),
    ("VERISEG_MAX_FRAMES", "0", "expected a whole number >= 1"),
    ("VERISEG_MAX_FRAMES", "ten", "expected a whole number, got 'ten'"),
    ("VERISEG_QUEUE", "0", "expected a whole number in 1..10000"),
    ("VERISEG_PENDING", "-5", "expected a whole number in 0..100000"),
    ("VERISEG_ANCHOR_EVERY", "-1", "expected a whole number in 0..1000000"),
    ("VERISEG_ANCHOR_EVERY", "1" + "0" * 30, "expected a whole number in 0..1000000"),
    ("VERISEG_ANCHOR_EVERY", "ten", "expected a whole number, got 'ten'"),
    ("VERISEG_POLL", "0", "expected a number > 0 and <= 3600"),
    ("VERISEG_POLL", "nan", "expected a number > 0 and <= 3600"),
    ("VERISEG_POLL", "1e308", "expected a number > 0 and <= 3600"),
    ("VERISEG_POLL", "fast", "expected a number of seconds, got 'fast'"),
    ("VERISEG_BATCH_WAIT_MS", "soon", "expected a number of milliseconds in 0..1000, got 'soon'"),
    ("VERISEG_BATCH_WAIT_MS", "-1", "expected a number of milliseconds in 0..1000"),
    ("VERISEG_BATCH_WAIT_MS", "nan", "expected a number of milliseconds in 0..1000"),
    ("VERISEG_BATCH_WAIT_MS", "1e9", "expected a number of milliseconds in 0..1000"),
    ("VERISEG_STATUS_MAX_AGE", "-5", "expected seconds >= 0 and <= 2.592e+06"),
    ("VERISEG_STATUS_MAX_AGE", "inf", "expected seconds >= 0 and <= 2.592e+06"),
    ("VERISEG_STATUS_MAX_AGE", "a day", "expected a number of seconds, got 'a day'"),
    ("VERISEG_PENDING_DEPLOY_MAX_S", "-1", "expected seconds >= 0 and <= 2.592e+06"),
    ("VERISEG_PENDING_DEPLOY_MAX_S", "nan", "expected seconds >= 0 and <= 2.592e+06"),
    ("VERISEG_PENDING_DEPLOY_MAX_S", "forever", "expected a number of seconds, got 'forever'"),
    ("VERISEG_MASKS", "yes please", "expected 1/0"),
    ("VERISEG_MASK_SIZE", "label", "expected model or frame"),
    ("VERISEG_KEEP_FRAMES", "every:0", "expected off, all, every:N, budget:MB or every:N,budget:MB"),
    ("VERISEG_KEEP_FRAMES", "budget:lots", "expected off, all, every:N, budget:MB or every:N,budget:MB"),
    ("VERISEG_OPENVINO_HINT", "fast", "expected throughput or latency"),
    ("VERISEG_PRECISION", "fp64", "expected card, fp32, bf16 or fp16, got 'fp64'"),
    ("VERISEG_PRECISION", "int8", "expected card, fp32, bf16 or fp16, got 'int8'"),
    ("VERISEG_OPENVINO_DEVICE", "gpu 1", "expected auto, or an OpenVINO device name"),
    ("VERISEG_VIDEO", "-1", "expected 1/0"),
    ("VERISEG_JSONL", "2", "expected 1/0"),
    ("VERISEG_VIDEO_SCALE", "0", "expected a number in (0, 1]"),
    ("VERISEG_VIDEO_SCALE", "1.5", "expected a number in (0, 1]"),
    ("VERISEG_VIDEO_SCALE", "nan", "expected a number in (0, 1]"),
    ("VERISEG_METRICS_PORT", "70000", "expected a whole number in 0..65535"),
    ("VERISEG_METRICS_PORT", "http", "expected a whole number, got 'http'"),
    ("VERISEG_METRICS_HOST", "my host!", "expected a host name or IP address"),
    ("VERISEG_METRICS_LINGER_S", "-1", "expected seconds >= 0 and <= 3600"),
    ("VERISEG_METRICS_LINGER_S", "forever", "expected a number of seconds, got 'forever'"),
    ("VERISEG_PROGRESS", "loud", "expected auto, 1 or 0"),
    ("VERISEG_PREPROCESS", "maybe", "expected auto or off"),
    ("VERISEG_RECONNECT_MAX", "-3", "expected a number > 0 and <= 86400"),
    ("VERISEG_STALL", "1e9", "expected a number > 0 and <= 86400"),
    ("VERISEG_MODEL_DIRS", "/nonexistent/models", "'/nonexistent/models' is not an existing folder"),
    ("VERISEG_ORT_SPIN", "spin", "expected 1/0"),
    ("VERISEG_AUX_NICE", "20", "expected a whole number in 0..19"),
    ("VERISEG_MAX_PIXELS", "0", "expected a whole number in 1..1073741824"),
    ("VERISEG_MAX_PIXELS", "lots", "expected a whole number, got 'lots'"),
    ("VERISEG_MAX_INPUT_BYTES", "0", "expected a whole number in 1..1099511627776"),
    ("VERISEG_MAX_INITIALIZER_BYTES", "1GB", "expected a whole number, got '1GB'"),
    ("VERISEG_MAX_TENSOR_ELEMENTS", "-5", "expected a whole number in 1..1125899906842624"),
    ("VERISEG_MAX_ARENA_BYTES", "-1", "expected a whole number in 0..17592186044416"),
    ("VERISEG_CHAIN_ID", "mainnet", "expected a chain id (a whole number > 0, decimal or 0x hex)"),
    ("VERISEG_CHAIN_ID", "0", "expected a chain id"),
    ("VERISEG_ANCHOR_EVRY", "5", "unknown variable (did you mean VERISEG_ANCHOR_EVERY?)"),
    ("VERISEG_FOO", "1", "unknown variable"),
]


@pytest.mark.parametrize("var,value,says", BAD_CONFIG, ids=[f"{v}={x[:12]}" for v, x, _ in BAD_CONFIG])
def test_each_bad_config_value_is_one_line_naming_the_variable(tmp_path, var, value, says):
    blob = tmp_path / "m.vsb"
    make_blob(blob)
    clip = make_clip(tmp_path / "c.avi", n=1)
    env = env_for(tmp_path, clip, blob)
    env[var] = value
    with pytest.raises(ConfigError) as ei:
        load_config(env)
    lines = str(ei.value).splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{var}: ") and says in lines[0], lines[0]


# enum-like values are read case-insensitively and without surrounding blanks, every one
# the same way (a value still outside the choices is refused: BAD_CONFIG)
SPELLINGS = [
    ("VERISEG_MASK_SIZE", "MODEL", "mask_size", "model"),
    ("VERISEG_MASK_SIZE", " Frame ", "mask_size", "frame"),
    ("VERISEG_BACKEND", " OnnxRuntime", "backend", "onnxruntime"),
    ("VERISEG_PROVIDERS", "CPU ", "providers", "cpu"),
    ("VERISEG_OPENVINO_HINT", " LATENCY", "openvino_hint", "latency"),
    ("VERISEG_OPENVINO_DEVICE", " Auto", "openvino_device", "auto"),
    ("VERISEG_OPENVINO_DEVICE", "gpu.1", "openvino_device", "GPU.1"),
    ("VERISEG_PROGRESS", " Off", "progress", "0"),
    ("VERISEG_PREPROCESS", "OFF", "preprocess", "off"),
]


@pytest.mark.parametrize("var,value,attr,expected", SPELLINGS,
                         ids=[f"{v}={x.strip()}" for v, x, _, _ in SPELLINGS])
def test_enum_values_are_accepted_in_any_case_and_with_blanks(tmp_path, var, value, attr, expected):
    blob = tmp_path / "m.vsb"
    make_blob(blob)
    env = env_for(tmp_path, make_clip(tmp_path / "c.avi", n=1), blob, **{var: value})
    assert getattr(load_config(env), attr) == expected


@pytest.mark.parametrize("value", ["frames", "model frame", "MODEL_"])
def test_a_mask_size_outside_the_choices_is_refused_in_any_case(tmp_path, value):
    blob = tmp_path / "m.vsb"
    make_blob(blob)
    env = env_for(tmp_path, make_clip(tmp_path / "c.avi", n=1), blob, VERISEG_MASK_SIZE=value)
    with pytest.raises(ConfigError) as ei:
        load_config(env)
    (line,) = str(ei.value).splitlines()
    assert line.startswith("VERISEG_MASK_SIZE: ") and "expected model or frame" in line, line


def test_every_documented_variable_is_covered_by_a_bad_value():
    # a password is any text (a wrong one is the key file's refusal: tests/chain/test_registry.py)
    assert {v for v, _, _ in BAD_CONFIG} >= set(ENV_DOC) - {"VERISEG_OUT", "VERISEG_HOME",
                                                            "VERISEG_KEYFILE_PASSWORD"}


def test_output_and_home_paths_that_cannot_be_folders(tmp_path):
    blob = tmp_path / "m.vsb"
    make_blob(blob)
    clip = make_clip(tmp_path / "c.avi", n=1)
    afile = tmp_path / "a-file"
    afile.write_text("x")
    cases = [("VERISEG_OUT", str(afile), "exists and is not a folder"),
             ("VERISEG_OUT", str(afile / "out"), f"cannot be created: '{afile}' is not a folder"),
             ("VERISEG_HOME", str(afile), "exists and is not a folder"),
             ("VERISEG_HOME", str(afile / "deeper" / "home"), "is not a folder")]
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        cases.append(("VERISEG_OUT", str(ro / "out"), "is not writable"))
    for var, value, says in cases:
        env = env_for(tmp_path, clip, blob, **{var: value})
        with pytest.raises(ConfigError) as ei:
            load_config(env)
        (line,) = str(ei.value).splitlines()
        assert line.startswith(f"{var}: ") and says in line, line
    # several bad values: one line each, all reported together
    env = env_for(tmp_path, clip, blob, VERISEG_OUT=afile, VERISEG_POLL="-1", VERISEG_QUEU="3")
    with pytest.raises(ConfigError) as ei:
        load_config(env)
    assert sorted(x.split(":")[0] for x in str(ei.value).splitlines()) == [
        "VERISEG_OUT", "VERISEG_POLL", "VERISEG_QUEU"]


def test_a_decrypt_key_file_with_bad_content_is_one_config_line(tmp_path, model):
    reg, blob, _ = model
    bad = tmp_path / "device.key"
    bad.write_text("not hex at all")
    clip = make_clip(tmp_path / "c.avi", n=1)
    with pytest.raises(ConfigError) as ei:
        build_flow(load_config(env_for(tmp_path, clip, blob, VERISEG_DECRYPT_KEY=bad)), registry=reg)
    (line,) = str(ei.value).splitlines()
    assert line.startswith(f"VERISEG_DECRYPT_KEY: {bad}: ")


def _subprocess_env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERISEG_")}
    blob = tmp_path / "m.vsb"
    make_blob(blob)
    env.update(env_for(tmp_path, make_clip(tmp_path / "c.avi", n=2), blob, **extra))
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.slow
def test_bytewax_run_with_bad_values_exits_with_one_line_per_value_and_no_traceback(tmp_path):
    env = _subprocess_env(tmp_path, VERISEG_POLL="1e308", VERISEG_MAX_PIXELS="-1",
                          VERISEG_ANCHOR_EVRY="5")
    p = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflows.segment"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=120)
    # the project's convention for a refused start (dataflows/segment.py): exit status 2
    assert p.returncode == 2, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    errs = [x for x in p.stderr.splitlines() if x.strip()]
    assert errs == [
        "veriseg: error: VERISEG_ANCHOR_EVRY: unknown variable (did you mean VERISEG_ANCHOR_EVERY?)",
        "veriseg: error: VERISEG_POLL: expected a number > 0 and <= 3600, got '1e308'",
        "veriseg: error: VERISEG_MAX_PIXELS: expected a whole number in 1..1073741824, got '-1'",
    ], p.stderr
