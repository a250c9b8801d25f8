"""bench/gpu_session.py runs only on a lent GPU, so here its training half runs on the CPU at
toy sizes: a batch of runs side by side, an early failure stopping the batch, and a tar whose
checkpoints the trainer loads."""
import json
import subprocess
import sys
import tarfile
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
TOY = "--size 48 --load-size 64 --eval-size 64 --val-every 1 --batch 4"


def session(tmp_path, *args):
    return subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_session.py"), "--data", "synthetic",
                           "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), "--device", "cpu",
                           "--skip-inference", "--minutes", "0.05", "--workers", "1", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_a_batch_of_toy_runs_comes_back_as_one_loadable_tar(tmp_path):
    from trainer.train import load_checkpoint
    r = session(tmp_path, "--jobs", "relu-f1-s0", "prelu-all-s0", "--extra", TOY)
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads((tmp_path / "out" / "gpu_session.json").read_text())
    assert {k: v["rc"] for k, v in result["training"]["status"].items()} == {"relu-f1-s0": 0, "prelu-all-s0": 0}
    with tarfile.open(tmp_path / "out" / "runs.tar.gz") as tar:
        names = set(tar.getnames())
        tar.extractall(tmp_path / "back", filter="data")
    # validated run: its best epoch; the final fit (no validation): its last
    assert {"runs/relu-f1-s0/best.pt", "runs/prelu-all-s0/last.pt", "runs/relu-f1-s0.log"} <= names
    assert "runs/relu-f1-s0/last.pt" not in names
    model, ck = load_checkpoint(tmp_path / "back" / "runs" / "relu-f1-s0" / "best.pt")
    assert "optimizer" not in ck and ck["config"]["variant"] == "relu"


def test_a_run_that_dies_at_once_stops_the_batch(tmp_path):
    r = session(tmp_path, "--jobs", "relu-f1-s0", "--extra", TOY + " --no-such-option")
    assert r.returncode == 0 and "failed early" in r.stdout, r.stdout + r.stderr
    status = json.loads((tmp_path / "out" / "gpu_session.json").read_text())["training"]["status"]
    assert status["relu-f1-s0"]["rc"] == 2
