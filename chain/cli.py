"""``python -m chain``: the registry from the command line.

Every refusal prints one line on stderr and exits 1; success exits 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from model_store.display import PrintableLogs, printable
from model_store.util import one_line

from . import errors, keystore
from .blob_index import record_blob, recorded_blob
from .config import DEFAULT_HOME, ChainConfig, ConfigError
from .frame_digest import COLOUR_ORDERS
from .rescore import rescore_frame
from .retained_frame import find_frame, read_frame, viewable

class CliError(Exception):
    pass


def blob_key(path: str | os.PathLike) -> str:
    """The key of a blob file, verified by ``model_store`` (structure + self-key)."""
    import model_store
    return model_store.verify(path)


def resolve_key(arg: str) -> str:
    """A KEY argument or a BLOB path -> 64-hex key."""
    from .values import normalize_key
    p = Path(arg)
    if p.exists():
        return blob_key(p)
    try:
        return normalize_key(arg)
    except errors.InvalidKey:
        raise CliError(f"'{arg}' is neither a model key (64 hex characters) nor an existing blob "
                       "file") from None


def _blob_name(path: Path) -> str:
    try:
        import model_store
        return model_store.read_header(path).name or path.stem
    except Exception:  # noqa: BLE001 - verify() already vouched for the file
        return path.stem


def _connect(args):
    from .connection import connect
    return connect(config=args.config)


def cmd_deploy_registry(args) -> int:
    from .connection import deploy_registry
    addr = deploy_registry(config=args.config)
    print(addr)
    if args.config.chain == "embedded":
        print("(embedded chain: fixed address, owner is deterministic dev account 0; "
              "local use only)", file=sys.stderr)
    return 0


def cmd_register(args) -> int:
    p = Path(args.blob)
    if not p.exists():
        raise CliError(f"blob {p} does not exist; pass the path of a .vsb file")
    key = blob_key(p)
    name = args.name or _blob_name(p)
    reg = _connect(args)
    tx = reg.register(key, name, args.uri or "")
    record_blob(args.config.home, key, p)   # for anchor-verify: the URI may be empty or remote
    print(printable(f"registered {key} as '{name}' (tx {tx})"))
    return 0


def cmd_deploy(args) -> int:
    key = resolve_key(args.model)
    reg = _connect(args)
    version = reg.deploy(args.name, key)
    print(printable(f"deployment '{args.name}' -> {key} (version {version})"))
    return 0


def cmd_revoke(args) -> int:
    key = resolve_key(args.model)
    reg = _connect(args)
    tx = reg.revoke(key, args.reason)
    print(printable(f"revoked {key}: {args.reason} (tx {tx})"))
    return 0


def cmd_status(args) -> int:
    key = resolve_key(args.model)
    reg = _connect(args)
    st = reg.status(key)
    name, uri = reg.info(key) if st.registered else ("", "")
    if args.json:
        print(json.dumps({"key": key, "state": st.state, "registered": st.registered,
                          "revoked": st.revoked, "reason": st.reason, "publisher": st.publisher,
                          "registered_at": st.registered_at, "name": name, "uri": uri,
                          "registry": reg.address}, sort_keys=True))
    elif not st.registered:
        print(f"{key}: unregistered")
    else:
        import datetime as dt
        at = dt.datetime.fromtimestamp(st.registered_at, dt.timezone.utc).isoformat(timespec="seconds")
        line = f"{key}: {st.state} ('{name}', registered {at} by {st.publisher})"
        if st.revoked:
            line += f" reason: {st.reason}"
        print(printable(line))   # the name and reason are the publisher's text
    return 0  # a query: "unregistered" is an answer, not a refusal


def cmd_current(args) -> int:
    reg = _connect(args)
    key, version = reg.current(args.name)
    if args.json:
        print(json.dumps({"deployment": args.name, "key": key, "version": version}))
    else:
        print(f"{key} (version {version})")
    return 0


def cmd_grant(args) -> int:
    reg = _connect(args)
    tx = reg.grant_role(args.role, args.address)
    print(f"granted {args.role} to {args.address} (tx {tx})")
    return 0


def cmd_revoke_role(args) -> int:
    reg = _connect(args)
    tx = reg.revoke_role(args.role, args.address)
    print(f"removed {args.role} from {args.address} (tx {tx})")
    return 0


def cmd_transfer_ownership(args) -> int:
    reg = _connect(args)
    tx = reg.transfer_ownership(args.address)
    print(f"ownership offered to {args.address} (tx {tx}); it takes over with "
          "`python -m chain accept-ownership`, which removes your publisher and anchorer roles")
    return 0


def cmd_accept_ownership(args) -> int:
    reg = _connect(args)
    tx = reg.accept_ownership()
    print(f"{reg.sender} owns registry {reg.address} (tx {tx}); the previous owner's roles are "
          "removed: grant yourself the ones you need")
    return 0


def cmd_deployments(args) -> int:
    key = resolve_key(args.model)
    reg = _connect(args)
    for d in reg.deployments_of(key):
        now = "current" if not d.superseded else f"superseded: now v{d.current_version} {d.current_key}"
        print(printable(f"'{d.name}' v{d.version} ({now})"))
    return 0


def cmd_events(args) -> int:
    reg = _connect(args)
    evs, nxt = reg.events(args.from_block, kinds=None if args.all else ("Deployed", "Revoked"))
    for ev in evs:
        if args.json:
            print(json.dumps(ev.to_json(), sort_keys=True))
        else:
            extra = {"Deployed": f"'{ev.deployment}' -> {ev.key} v{ev.version}",
                     "Revoked": f"{ev.key}: {ev.reason}"}.get(ev.kind, json.dumps(ev.args, sort_keys=True))
            print(printable(f"block {ev.block} {ev.kind} {extra}"))
    print(f"next block {nxt}", file=sys.stderr)
    return 0


def cmd_anchor(args) -> int:
    from .anchor_batch import AnchorBatch
    batch, raw = AnchorBatch.read(args.batch)
    if raw.get("chain") and not args.force:
        raise CliError(f"batch {args.batch} was already anchored (tx {raw['chain'].get('tx_hash')}); "
                       "pass --force to anchor it again")
    reg = _connect(args)
    tx = batch.anchor(reg)
    batch.write(args.batch, include_proofs="proofs" in raw)
    print(f"anchored root {batch.root.hex()} for seq {batch.first_seq}..{batch.last_seq} (tx {tx})")
    return 0


def blob_of(reg, key: str, blob: str | None = None) -> Path | None:
    """The blob file of ``key``: ``blob`` (which must hash to the key), else the URI it was
    registered with when that is a local file that still hashes to the key, else the blob
    ``register`` recorded on this machine (chain.blob_index) when it still hashes to the key;
    None otherwise."""
    import model_store
    if blob is not None:
        got = blob_key(blob)
        if got != key:
            raise CliError(f"--blob {blob} has key {got}, not the anchored model {key}; pass "
                           "the blob of the model that scored the frame")
        return Path(blob)
    try:
        from urllib.parse import unquote, urlparse
        uri = reg.info(key)[1]
        u = urlparse(uri)
        path = Path(unquote(u.path)) if u.scheme == "file" else Path(uri)
        if uri and path.is_file() and model_store.verify(path) == key:
            return path
    except Exception:  # noqa: BLE001 - no blob there: try the local record
        pass
    try:
        path = recorded_blob(reg.home, key)
        if path is not None and model_store.verify(path) == key:
            return Path(path)
    except Exception:  # noqa: BLE001 - no blob: a line with shares is refused, not trusted
        pass
    return None


def card_of(reg, key: str, blob: str | None = None):
    """The card of ``key``'s blob (:func:`blob_of`); None when there is no such blob (a
    results line's shares then cannot be checked)."""
    import model_store
    path = blob_of(reg, key, blob)
    try:
        return None if path is None else model_store.read_header(path)
    except Exception:  # noqa: BLE001 - no card: a line with shares is refused, not trusted
        return None


def _card_class_names(reg, key: str, blob: str | None = None):
    card = card_of(reg, key, blob)
    return None if card is None else [c.name for c in card.classes]


def prove_frame(connect, batch, stream: str, seq: int, *, mask=None, result=None, blob=None,
                line=None):
    """What ``anchor-verify`` checks, for any caller (the CLI, the audit page): the frame's
    class map (``mask``, else the one its ``result`` line names) against its batch and the
    chain, then that line. ``result``: a path or a ``chain.results.ResultsFile`` (the page's,
    under its file root); ``line``: its ``(line number, record)`` the caller already read
    (what the page shows), else the frame's one line there. ``connect()`` gives the
    registry (called once the mask is read). Returns the Verification; raises
    AnchorVerificationFailed whose ``.check`` names the first check that failed (in this
    order: result_missing and result_ambiguous when the mask comes from the line, mask,
    then verify_frame's, then verify_result_line's)."""
    return _prove(connect, batch, stream, seq, mask=mask, result=result, blob=blob, line=line)[0]


def prove_and_rescore(connect, batch, stream: str, seq: int, *, mask=None, result=None, blob=None,
                      line=None, frame=None):
    """``anchor-verify --rescore``: :func:`prove_frame`, then the model re-run on the
    retained frame (``frame``, else the one kept next to ``result``) by
    ``chain.rescore.rescore_frame``. Returns (Verification, Rescore) whatever the rescore
    found (``Rescore.check()`` refuses a mismatch); raises AnchorVerificationFailed as
    prove_frame does, then rescore_unavailable, frame_missing or frame_mismatch."""
    v, class_map, reg = _prove(connect, batch, stream, seq, mask=mask, result=result, blob=blob,
                               line=line)
    if frame is None:
        if result is None:
            raise CliError("--rescore needs --frame FRAME, or --result RESULTS.jsonl whose folder "
                           "keeps the frame (frames/<seq>.<order>.vsf)")
        folder = Path(str(result)).parent     # a path, or the page's ResultsFile
        frame = find_frame(folder, seq)
        if frame is None:
            raise errors.AnchorVerificationFailed(
                f"frame missing: {folder / 'frames'} keeps no frame {seq:06d} of "
                f"stream '{stream}'; the device did not keep it (VERISEG_KEEP_FRAMES) or it was "
                "rotated out: pass --frame FRAME if you hold it", check="frame_missing")
    path = blob_of(reg, v.model_key, blob)
    if path is None:
        raise errors.AnchorVerificationFailed(
            f"rescore unavailable: the blob of model {v.model_key[:16]}… is not at its registered "
            "URI nor recorded by register here; pass --blob BLOB", check="rescore_unavailable")
    return v, rescore_frame(v, class_map, path, frame)


def _prove(connect, batch, stream: str, seq: int, *, mask=None, result=None, blob=None, line=None):
    from .anchor_verify import read_mask, verify_frame
    from .results import ResultsFile, verify_result_line
    results = None
    if result is not None:
        results = result if isinstance(result, ResultsFile) else ResultsFile.at(result)
    if mask is None:
        if results is None:
            raise CliError("anchor-verify needs --mask PNG, or --result RESULTS.jsonl whose line "
                           "names the mask")
        # the frame's one line names its mask, relative to the results file and under its folder
        line = line or results.line(stream, seq)
        class_map = results.mask(line[1])
    else:
        class_map = read_mask(mask)
    reg = connect()
    v = verify_frame(batch, stream, seq, class_map, registry=reg)
    if results is not None:
        verify_result_line(results, v, class_map, _card_class_names(reg, v.model_key, blob),
                           line=line)
    return v, class_map, reg


def cmd_anchor_verify(args) -> int:
    if args.frame is not None and not args.rescore:
        raise CliError("--frame is the frame to re-score: pass it with --rescore")
    rescored = None
    if args.rescore:
        v, rescored = prove_and_rescore(lambda: _connect(args), args.batch, args.stream, args.seq,
                                        mask=args.mask, result=args.result, blob=args.blob,
                                        frame=args.frame)
        rescored.check()
    else:
        v = prove_frame(lambda: _connect(args), args.batch, args.stream, args.seq, mask=args.mask,
                        result=args.result, blob=args.blob)
    if args.json:
        out = dict(v.__dict__)
        if rescored is not None:
            out["rescore"] = rescored.as_dict()
        print(json.dumps(out, sort_keys=True))
    else:
        print(v.line() + (f"; its line in {args.result} matches" if args.result else "")
              + (f"; {rescored.line()}" if rescored is not None else ""))
    return 0


def cmd_frame(args) -> int:
    image, colour = read_frame(args.frame)
    out = Path(args.output)
    parts = out.name.lower().split(".")
    if out.suffix.lower() != ".png" or (len(parts) >= 3 and parts[-2].upper() in COLOUR_ORDERS
                                        and parts[-2].upper() != colour):
        raise CliError(f"{out} must be a .png, and not named for another colour order than the "
                       f"frame's ({colour.lower()}): e.g. {Path(args.frame).stem}.png")
    out.write_bytes(viewable(image, colour))
    print(f"wrote {out} ({image.shape[1]}x{image.shape[0]}, decoded in {colour})")
    return 0


def cmd_audit(args) -> int:
    try:
        from web.audit import run_audit
    except ImportError as e:
        raise CliError(f"the audit page needs the web extra ({e}): pip install 'veriseg[web]'") from None
    return run_audit(args.out_dir, _connect(args), host=args.host, port=args.port, blob=args.blob,
                     token=args.config.web_token)


class _Parser(argparse.ArgumentParser):
    """Usage errors are refusals too: one line on stderr, exit 1."""

    def error(self, message: str):
        self.exit(1, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m chain",
                                 description="VeriSeg model registry on an Ethereum chain.")
    ap.add_argument("--chain", default=None,
                    help="'embedded' (default) or an http:// JSON-RPC URL [VERISEG_CHAIN]")
    ap.add_argument("--home", type=Path, default=None,
                    help=f"embedded chain state folder [VERISEG_HOME, default {DEFAULT_HOME}]")
    ap.add_argument("--registry", default=None, help="registry address on a node [VERISEG_REGISTRY]")
    ap.add_argument("--keyfile", type=Path, default=None,
                    help="encrypted JSON keystore that signs [VERISEG_KEYFILE; password in "
                         "VERISEG_KEYFILE_PASSWORD]")
    ap.add_argument("--chain-id", type=int, default=None,
                    help="the chain id the registry must be on [VERISEG_CHAIN_ID; default: the "
                         "one recorded at deploy-registry or first use]")
    ap.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND",
                            parser_class=_Parser)

    p = sub.add_parser("deploy-registry", help="deploy a ModelRegistry and print its address")
    p.set_defaults(fn=cmd_deploy_registry)

    p = sub.add_parser("register", help="register a blob's key")
    p.add_argument("blob")
    p.add_argument("--uri", default="", help="where the blob can be fetched (public, on "
                   "chain); the local path is also recorded in VERISEG_HOME for anchor-verify")
    p.add_argument("--name", default=None, help="model name (default: the card's name)")
    p.set_defaults(fn=cmd_register)

    p = sub.add_parser("deploy", aliases=["deploy-model"],
                       help="point a deployment name at a key (hot swap, no rollback)")
    p.add_argument("name")
    p.add_argument("model", metavar="KEY|BLOB")
    p.set_defaults(fn=cmd_deploy)

    p = sub.add_parser("revoke", help="revoke a key for good")
    p.add_argument("model", metavar="KEY|BLOB")
    p.add_argument("--reason", required=True)
    p.set_defaults(fn=cmd_revoke)

    p = sub.add_parser("status", help="active / revoked / unregistered")
    p.add_argument("model", metavar="KEY|BLOB")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_status)

    p = sub.add_parser("current", help="the key and version a deployment points at")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_current)

    p = sub.add_parser("grant", help="give ROLE (publisher|anchorer) to ADDRESS (owner only)")
    p.add_argument("role", choices=["publisher", "anchorer"])
    p.add_argument("address")
    p.set_defaults(fn=cmd_grant)

    p = sub.add_parser("revoke-role", help="take ROLE away from ADDRESS (owner only)")
    p.add_argument("role", choices=["publisher", "anchorer"])
    p.add_argument("address")
    p.set_defaults(fn=cmd_revoke_role)

    p = sub.add_parser("transfer-ownership",
                       help="offer ownership to ADDRESS (owner; it must accept-ownership)")
    p.add_argument("address")
    p.set_defaults(fn=cmd_transfer_ownership)

    p = sub.add_parser("accept-ownership",
                       help="take over a registry offered to you; the old owner's roles go")
    p.set_defaults(fn=cmd_accept_ownership)

    p = sub.add_parser("deployments", help="every deployment that ever pointed at a key")
    p.add_argument("model", metavar="KEY|BLOB")
    p.set_defaults(fn=cmd_deployments)

    p = sub.add_parser("events", help="registry events (Deployed/Revoked; --all for every kind)")
    p.add_argument("--from", dest="from_block", type=int, default=0)
    p.add_argument("--all", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_events)

    p = sub.add_parser("anchor", help="anchor a batch file written without a chain")
    p.add_argument("batch")
    p.add_argument("--force", action="store_true")
    p.set_defaults(fn=cmd_anchor)

    p = sub.add_parser("anchor-verify", help="prove one frame's result against the on-chain root")
    p.add_argument("batch", metavar="BATCH.json")
    p.add_argument("--stream", required=True)
    p.add_argument("--seq", required=True, type=int)
    p.add_argument("--mask", default=None, help="class-map PNG (single-channel class ids)")
    p.add_argument("--result", default=None, metavar="RESULTS.jsonl",
                   help="also check the frame's line there: every field must be bound by the "
                        "leaf or recomputed from the proven mask; its mask is used when --mask "
                        "is not given")
    p.add_argument("--blob", default=None, metavar="BLOB",
                   help="the model's blob, for the class names a line's shares use and for "
                        "--rescore (default: the registered URI when it is a local file)")
    p.add_argument("--rescore", action="store_true",
                   help="also re-run the model on the retained frame and compare its mask with "
                        "the anchored one (docs/security.md: what that proves)")
    p.add_argument("--frame", default=None, metavar="FRAME",
                   help="the retained frame for --rescore (default: frames/<seq>.<order>.vsf "
                        "next to --result; a <seq>.<order>.png made by `frame` is read too)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_anchor_verify)

    p = sub.add_parser("audit", help="serve the audit page over a run's outputs (web extra)")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (beyond loopback only with VERISEG_WEB_TOKEN)")
    p.add_argument("--port", type=int, default=8081, help="0: any free port")
    p.add_argument("--blob", default=None, help="the model's blob (class names and colours)")
    for opt, kind in (("--chain", str), ("--home", Path), ("--registry", str)):   # also after the command
        p.add_argument(opt, type=kind, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.set_defaults(fn=cmd_audit)

    p = sub.add_parser("frame", help="turn a retained frame (.vsf) into a PNG any viewer opens")
    p.add_argument("frame", metavar="FRAME", help="frames/<seq>.<order>.vsf")
    p.add_argument("-o", "--output", required=True, metavar="PNG",
                   help="where to write it; name it <seq>.<order>.png to hand it to --rescore")
    p.set_defaults(fn=cmd_frame)

    keystore.add_commands(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler()
    handler.addFilter(PrintableLogs())   # names and reasons from the chain: no raw ESC
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format="%(name)s: %(message)s", handlers=[handler])
    try:
        # the flags override the environment's values
        args.config = ChainConfig.from_env().overridden(
            chain=args.chain, home=args.home, registry=args.registry, keyfile=args.keyfile,
            chain_id=args.chain_id)
        return args.fn(args)
    except ConfigError as exc:
        print(f"error: {'; '.join(exc.problems)}", file=sys.stderr)
    except errors.AnchorVerificationFailed as exc:
        print(f"anchor-verify failed [{exc.check}]: {one_line(exc)}", file=sys.stderr)
    except (errors.ChainError, CliError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - refusals from model_store and friends
        mod = type(exc).__module__ or ""
        if mod.startswith("model_store"):
            print(f"error: {one_line(exc)}", file=sys.stderr)
        elif isinstance(exc, (OSError, ValueError)):
            print(f"error: {type(exc).__name__}: {one_line(exc)}", file=sys.stderr)
        else:
            print(f"error: unexpected {type(exc).__name__}: {one_line(exc)} (rerun with -v "
                  "and report it)", file=sys.stderr)
            if args.verbose:
                raise
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
    return 1
