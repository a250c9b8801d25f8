"""Retry policies of chain calls (chain.retries, on tenacity): a transient transport error
is tried again, a revert or a refusal never is; the flow's anchor sender waits out an
outage and stops waiting when it is closed."""
import os
import time
from pathlib import Path

import pytest

import chain
from chain import errors
from chain.retries import is_transient, retry


class Script:
    """A call that raises the given errors in turn, then returns 'ok'; counts the calls."""

    def __init__(self, *raises):
        self.raises = list(raises)
        self.calls = 0

    def __call__(self, *a, **kw):
        self.calls += 1
        if self.raises:
            raise self.raises.pop(0)
        return "ok"


def test_a_transient_error_is_retried_until_the_call_passes():
    call = Script(ConnectionError("refused"), TimeoutError("slow"))
    assert retry(call, base_delay=0.01) == "ok" and call.calls == 3


def test_a_transient_error_that_persists_is_one_chain_unavailable_line():
    call = Script(*[ConnectionError("refused\nsecond line")] * 5)
    with pytest.raises(errors.ChainUnavailable) as ei:
        retry(call, attempts=3, base_delay=0.01)
    assert call.calls == 3 and "\n" not in str(ei.value) and "refused" in str(ei.value)


def test_the_deadline_bounds_the_retries():
    call = Script(*[ConnectionError("refused")] * 50)
    t0 = time.monotonic()
    with pytest.raises(errors.ChainUnavailable):
        retry(call, attempts=50, base_delay=0.2, max_delay=0.2, deadline=0.5)
    assert call.calls < 50 and time.monotonic() - t0 < 5


def test_a_revert_is_not_retried():
    from web3.exceptions import ContractLogicError
    revert = ContractLogicError("execution reverted", data="0x08c379a0")
    assert not is_transient(revert)
    call = Script(revert)
    with pytest.raises(ContractLogicError):
        retry(call, base_delay=0.01)
    assert call.calls == 1


@pytest.mark.parametrize("refusal", [errors.ChainError("not a publisher"),
                                     errors.ChainUnavailable("already converted once")])
def test_a_refusal_decoded_by_the_client_is_not_retried(refusal):
    call = Script(refusal)
    with pytest.raises(type(refusal)):
        retry(call, base_delay=0.01)
    assert call.calls == 1


# --------------------------------------------------------------------------- anchor sender
class _Batch:
    model_key = "ab" * 32
    root = b"\x01" * 32
    first_seq, last_seq = 0, 4

    def anchor(self, registry):
        return registry.anchor(self.root, self.model_key, self.first_seq, self.last_seq,
                               stream="s")


def _sender(tmp_path, monkeypatch, registry):
    import operators.sinks.anchors as anchors
    from operators.telemetry import Stats
    sealed = []
    monkeypatch.setattr(anchors, "write_sealed", lambda path, batch, secret: sealed.append(path))
    stats = Stats()
    return anchors.AnchorSender(registry, Path(tmp_path), b"s" * 32, stats=stats,
                                revoked=set()), stats, sealed


class _Registry:
    def __init__(self, *raises):
        self.anchor = Script(*raises)


def test_the_anchor_sender_waits_out_an_outage(tmp_path, monkeypatch):
    import chain.retries
    monkeypatch.setattr(chain.retries, "wait_exponential_jitter",
                        lambda **kw: (lambda state: 0.01))
    reg = _Registry(errors.ChainUnavailable("down"), errors.ChainUnavailable("down"))
    sender, stats, sealed = _sender(tmp_path, monkeypatch, reg)
    sender.submit(Path(tmp_path) / "000000-000004.json", _Batch())
    sender.close(timeout=10)
    assert reg.anchor.calls == 3 and len(sealed) == 1
    assert stats.anchors == 1 and stats.anchor_failures == 2


def test_the_anchor_sender_never_retries_a_refusal(tmp_path, monkeypatch):
    reg = _Registry(errors.ChainError("account is not an ANCHORER"))
    sender, stats, sealed = _sender(tmp_path, monkeypatch, reg)
    sender.submit(Path(tmp_path) / "000000-000004.json", _Batch())
    sender.close(timeout=10)
    assert reg.anchor.calls == 1 and sealed == []
    assert stats.anchors == 0 and stats.anchor_failures == 1


def test_closing_the_sender_stops_waiting_for_a_chain_that_stays_down(tmp_path, monkeypatch):
    reg = _Registry(*[errors.ChainUnavailable("down")] * 1000)
    sender, stats, sealed = _sender(tmp_path, monkeypatch, reg)
    sender.submit(Path(tmp_path) / "000000-000004.json", _Batch())
    sender.submit(Path(tmp_path) / "000005-000009.json", _Batch())
    t0 = time.monotonic()
    sender.close(timeout=0.3)
    sender.thread.join(5)
    assert not sender.thread.is_alive() and time.monotonic() - t0 < 5
    assert sealed == [] and stats.anchors == 0 and stats.anchor_failures >= 1


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="per-thread niceness is a Linux feature")
def test_the_anchor_sender_thread_yields_to_scoring(tmp_path, monkeypatch):
    """Anchoring is never urgent; on the embedded chain it runs the EVM in this process, and
    at the flow's own priority it cost a live camera frames (bench live)."""
    import threading

    import operators.sinks.anchors as anchors
    seen = {}

    class Probe(_Registry):
        def __init__(self):
            super().__init__()
            self.anchor = lambda *a, **kw: seen.setdefault(
                "nice", os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
    base = os.getpriority(os.PRIO_PROCESS, 0)
    sender, stats, sealed = _sender(tmp_path, monkeypatch, Probe())
    sender.submit(Path(tmp_path) / "000000-000004.json", _Batch())
    sender.close(timeout=10)
    assert seen["nice"] == min(19, base + anchors.ANCHOR_NICE) and len(sealed) == 1
    assert os.getpriority(os.PRIO_PROCESS, 0) == base       # the flow's own threads are untouched


# --------------------------------------------------------------------------- loop backoff
def test_a_loop_backoff_doubles_up_to_its_maximum_and_starts_over_after_a_reset():
    from chain.retries import Backoff
    backoff = Backoff(0.5, 3.0)
    assert [backoff.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next() == 0.5
