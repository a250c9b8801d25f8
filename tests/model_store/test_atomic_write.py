"""One writer for files readers must see whole: ``model_store.util.atomic_write``. Writers
in several threads of one process never share a temporary file, and the flow's sealed
anchor batches go through the same writer as every other batch file."""
import json
import threading

from chain.anchor_batch import AnchorBatch
from model_store.util import atomic_write
from operators.anchor_seal import is_sealed, write_sealed


def test_threads_writing_one_file_never_collide(tmp_path):
    path, errors = tmp_path / "status.json", []

    def write(n):
        try:
            for i in range(100):
                atomic_write(path, f"{n}-{i}")
        except OSError as e:  # two writers on one temporary name fail here
            errors.append(e)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and path.read_text().endswith("-99")
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_a_sealed_batch_is_the_batch_file_plus_its_seal(tmp_path, monkeypatch):
    batch = AnchorBatch.build("ab" * 32, [("cam0", 1, b"\x00" * 16)])
    written = []
    real_write = AnchorBatch.write
    monkeypatch.setattr(AnchorBatch, "write", lambda self, *a, **kw: written.append(a) or real_write(self, *a, **kw))
    path = write_sealed(tmp_path / "anchor.json", batch, b"k" * 32)
    doc = json.loads(path.read_text())
    assert written and is_sealed(b"k" * 32, batch, doc) and "proofs" in doc
    assert [p.name for p in tmp_path.iterdir()] == ["anchor.json"]
