"""The live view started and stopped with the flow (``web.flow``; tiny model, stand-in
registry): what it serves, that the flow runs without it when the port is taken, and that
``web.flow`` without the web extra, or the segment flow asked for a view, is one line."""
from __future__ import annotations

import json
import socket
import sys

import pytest

from tests.flow_fixtures import FakeRegistry, env_for, make_blob, make_clip, wait_for
from tests.web_fixtures import FlowThread, free_port, get

pytest.importorskip("aiohttp")


def _flow(tmp_path, port, build=None, **extra):
    from operators.config import load_config
    from web.flow import build_flow
    blob = tmp_path / "models" / "tiny.vsb"
    key = make_blob(blob)
    reg = FakeRegistry()
    reg.register(key, "tiny", blob.resolve().as_uri())
    clip = make_clip(tmp_path / "cam.avi", n=12)
    cfg = load_config(env_for(tmp_path, clip, blob, VERISEG_WEB=f"127.0.0.1:{port}",
                              **{"VERISEG_BACKEND": "onnxruntime", **extra}))
    return (build or build_flow)(cfg, registry=reg), key, reg


def test_the_live_view_serves_while_the_flow_runs_and_stops_with_it(tmp_path):
    port = free_port()
    flow, key, reg = _flow(tmp_path, port, VERISEG_LOOP=1, VERISEG_ANCHOR_EVERY=5)
    view, = flow.context.views
    assert view.url == f"http://127.0.0.1:{port}/"
    running = FlowThread(flow)
    try:
        assert wait_for(lambda: sum(flow.context.stats.written.values()) >= 12, timeout=300)
        status, headers, body = get(port, "/api/state")
        state = json.loads(body)
        s = state["streams"][0]
        assert status == 200 and s["id"] == "cam" and s["scored"] >= 12
        assert s["model"]["key"] == key and s["model"]["status"] == "active" and state["banner"] == []
        assert get(port, "/api/frame.jpg?stream=cam")[2][:2] == b"\xff\xd8"
        def sent():   # a batch is shown once written, its transaction once the sender sent it
            return [a for a in json.loads(get(port, "/api/state")[2])["anchors"] if a["tx"]]
        assert wait_for(sent, timeout=60)
        a = sent()[0]
        assert a["stream"] == "cam" and a["model_key"] == key and a["tx"].startswith("0x")
        reg.down = True   # the node goes away: the banner says so (status unknown)
        assert wait_for(lambda: not json.loads(get(port, "/api/state")[2])["chain"]["reachable"],
                        timeout=60)
        state = json.loads(get(port, "/api/state")[2])
        assert state["streams"][0]["model"]["status"] == "unknown"
        assert any("chain unreachable" in b for b in state["banner"])
        reg.down = False
    finally:
        running.stop()
    _assert_stopped(view, port)


def _assert_stopped(view, port):
    """The view's server thread has ended and nothing listens on its port any more."""
    view.server.thread.join(10)
    assert not view.server.thread.is_alive(), "the live view's server thread is still running"
    assert view.server.loop.is_closed()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_the_live_view_stops_when_the_flow_stops_on_an_error(tmp_path):
    from bytewax.testing import run_main
    port = free_port()
    flow, _, _ = _flow(tmp_path, port)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "cam").write_text("a file where the stream's folder goes")
    assert get(port, "/api/state")[0] == 200   # serving from the flow's build on
    with pytest.raises(Exception):   # Bytewax wraps the sink's RuntimeError in its own
        run_main(flow)
    assert "cannot open outputs" in flow.context.stats.error
    _assert_stopped(flow.context.views[0], port)


def test_web_flow_without_the_web_extra_is_one_line_and_exit_status_2(monkeypatch, capsys):
    import importlib
    monkeypatch.setitem(sys.modules, "web.live", None)   # import web.live -> ImportError
    monkeypatch.delitem(sys.modules, "web.flow", raising=False)
    with pytest.raises(SystemExit) as exc:
        importlib.import_module("web.flow")
    err = capsys.readouterr().err.splitlines()
    assert exc.value.code == 2 and len(err) == 1
    assert "needs the web extra" in err[0] and "pip install 'veriseg[web]'" in err[0]


def test_the_segment_flow_asked_for_a_view_says_where_it_is_and_runs(tmp_path, caplog):
    from bytewax.testing import run_main

    from dataflows.segment import build_flow
    flow, _, _ = _flow(tmp_path, free_port(), build=build_flow)
    run_main(flow)
    lines = [r.getMessage() for r in caplog.records if "VERISEG_WEB" in r.getMessage()]
    assert len(lines) == 1 and "python -m bytewax.run web.flow" in lines[0]
    assert flow.context.views == [] and sum(flow.context.stats.written.values()) == 12


def test_a_taken_port_is_one_line_and_the_flow_runs_without_the_view(tmp_path, caplog):
    from bytewax.testing import run_main
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        flow, _, _ = _flow(tmp_path, taken.getsockname()[1])
        run_main(flow)
    lines = [r.getMessage() for r in caplog.records if "VERISEG_WEB" in r.getMessage()]
    assert len(lines) == 1 and "cannot listen" in lines[0] and "without the live view" in lines[0]
    assert flow.context.views == [] and sum(flow.context.stats.written.values()) == 12
