"""bench/gpu_session.py runs only on a lent GPU, so here its training half runs on the CPU at
toy sizes: a batch of runs side by side, an early failure stopping the batch, and tars whose
checkpoints the trainer loads."""
import json
import subprocess
import sys
import tarfile
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
TOY = "--size 48 --load-size 64 --eval-size 64 --val-every 1 --batch 4"


def session(tmp_path, *args):
    return subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_session.py"), "--data", "synthetic",
                           "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), "--device", "cpu",
                           "--skip-inference", "--minutes", "0.05", "--workers", "1", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_a_batch_of_toy_runs_comes_back_as_two_loadable_tars(tmp_path):
    import torch
    from trainer.train import load_checkpoint
    r = session(tmp_path, "--jobs", "rcm-f1-s1", "rcm-all-s0", "--extra", TOY)
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads((tmp_path / "out" / "gpu_session.json").read_text())
    assert {k: v["rc"] for k, v in result["training"]["status"].items()} == {"rcm-f1-s1": 0, "rcm-all-s0": 0}
    names = {}
    for tar_name in ("runs.tar.gz", "best.tar.gz"):
        with tarfile.open(tmp_path / "out" / tar_name) as tar:
            names[tar_name] = set(tar.getnames())
            tar.extractall(tmp_path / tar_name, filter="data")
    # last weights of every run (the held-out estimate), with the logs; best only where validated
    assert {"runs/rcm-f1-s1/last.pt", "runs/rcm-all-s0/last.pt", "runs/rcm-f1-s1.log",
            "runs/rcm-f1-s1/metrics.jsonl"} <= names["runs.tar.gz"]
    assert names["best.tar.gz"] == {"runs/rcm-f1-s1/best.pt"}
    model, ck = load_checkpoint(tmp_path / "runs.tar.gz" / "runs" / "rcm-f1-s1" / "last.pt")
    assert "optimizer" not in ck
    assert ck["config"]["variant"] == "relu" and ck["config"]["rare_crops"] == 0.5 and ck["config"]["seed"] == 1
    # what comes back is the EMA, whichever key a reader takes
    assert all(torch.equal(ck["model"][k], ck["ema"][k]) for k in ck["ema"])


def test_a_run_that_dies_at_once_stops_the_batch_and_its_fine_tunes_never_start(tmp_path):
    r = session(tmp_path, "--jobs", "rcm-f1-s0", "--finetunes", "cond35-f1",
                "--extra", TOY + " --no-such-option")
    assert r.returncode == 0 and "failed early" in r.stdout, r.stdout + r.stderr
    result = json.loads((tmp_path / "out" / "gpu_session.json").read_text())
    assert result["training"]["status"]["rcm-f1-s0"]["rc"] == 2
    assert "finetuning" not in result


def test_fine_tunes_start_from_the_first_stage_runs_last_weights(tmp_path):
    from trainer.train import load_checkpoint
    r = session(tmp_path, "--jobs", "rcm-f1-s0", "--epochs", "1", "--finetunes", "cond35-f1", "cons-f1",
                "--finetune-epochs", "1", "--extra", TOY)
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads((tmp_path / "out" / "gpu_session.json").read_text())
    assert {k: v["rc"] for k, v in result["finetuning"]["status"].items()} == {"cond35-f1": 0, "cons-f1": 0}
    assert result["finetuning"]["runs"]["cons-f1"] == {"init": "rcm-f1-s0",
                                                      "args": ["--conditions", "0.8", "--consistency", "2.0"]}
    log = (tmp_path / "work" / "runs" / "cond35-f1.log").read_text()
    assert f"init: weights from {tmp_path / 'work' / 'runs' / 'rcm-f1-s0' / 'last.pt'}" in log
    with tarfile.open(tmp_path / "out" / "runs.tar.gz") as tar:
        tar.extractall(tmp_path / "back", filter="data")
    _, ck = load_checkpoint(tmp_path / "back" / "runs" / "cond35-f1" / "last.pt")
    assert ck["config"]["conditions"] == 0.35 and ck["config"]["lr"] == 1e-3


def test_fine_tunes_of_first_stage_weights_placed_in_the_work_folder_beforehand(tmp_path):
    """A later lease fine-tunes the bases an earlier one trained: no first stage runs."""
    assert session(tmp_path, "--jobs", "rcm-f1-s0", "--epochs", "1", "--extra", TOY).returncode == 0
    r = session(tmp_path, "--jobs", "--finetunes", "cond35-f1-s1", "cond35-f2-s1", "--finetune-epochs", "1",
                "--extra", TOY)
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads((tmp_path / "out" / "gpu_session.json").read_text())
    assert result["training"]["status"] == {}
    # fold 2's base was never trained in this work folder: skipped, not started on nothing
    assert result["finetuning"]["skipped"] == ["cond35-f2-s1"]
    assert result["finetuning"]["status"]["cond35-f1-s1"]["rc"] == 0
