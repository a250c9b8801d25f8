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

import model_store
from model_store.display import PrintableLogs, printable
from model_store.util import one_line

from . import errors, keystore
from .blob_index import record_blob
from .config import DEFAULT_HOME, ChainConfig, ConfigError
from .frame_digest import COLOUR_ORDERS
from .frame_proof import prove_and_rescore, prove_frame
from .retained_frame import read_frame, viewable
from .values import parse_key


class CliError(Exception):
    pass


def blob_key(path: str | os.PathLike) -> str:
    """The key of a blob file, verified by ``model_store`` (structure + self-key)."""
    return model_store.verify(path)


def resolve_key(arg: str) -> str:
    """A KEY argument or a BLOB path -> 64-hex key."""
    p = Path(arg)
    if p.exists():
        return blob_key(p)
    try:
        return parse_key(arg)
    except errors.InvalidKey:
        raise CliError(f"'{arg}' is neither a model key (64 hex characters) nor an existing blob "
                       "file") from None


def _blob_name(path: Path) -> str:
    try:
        return model_store.read_header(path).name or path.stem
    except Exception:  # noqa: BLE001 - verify() already vouched for the file
        return path.stem


def connect_from_args(args):
    """The registry the options of :func:`add_registry_options` name."""
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
    reg = connect_from_args(args)
    tx = reg.register(key, name, args.uri or "")
    record_blob(args.config.home, key, p)   # for anchor-verify: the URI may be empty or remote
    print(printable(f"registered {key} as '{name}' (tx {tx})"))
    return 0


def cmd_deploy(args) -> int:
    key = resolve_key(args.model)
    reg = connect_from_args(args)
    version = reg.deploy(args.name, key)
    print(printable(f"deployment '{args.name}' -> {key} (version {version})"))
    return 0


def cmd_revoke(args) -> int:
    key = resolve_key(args.model)
    reg = connect_from_args(args)
    tx = reg.revoke(key, args.reason)
    print(printable(f"revoked {key}: {args.reason} (tx {tx})"))
    return 0


def cmd_status(args) -> int:
    key = resolve_key(args.model)
    reg = connect_from_args(args)
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
    reg = connect_from_args(args)
    key, version = reg.current(args.name)
    if args.json:
        print(json.dumps({"deployment": args.name, "key": key, "version": version}))
    else:
        print(f"{key} (version {version})")
    return 0


def cmd_grant(args) -> int:
    reg = connect_from_args(args)
    tx = reg.grant_role(args.role, args.address)
    print(f"granted {args.role} to {args.address} (tx {tx})")
    return 0


def cmd_revoke_role(args) -> int:
    reg = connect_from_args(args)
    tx = reg.revoke_role(args.role, args.address)
    print(f"removed {args.role} from {args.address} (tx {tx})")
    return 0


def cmd_transfer_ownership(args) -> int:
    reg = connect_from_args(args)
    tx = reg.transfer_ownership(args.address)
    print(f"ownership offered to {args.address} (tx {tx}); it takes over with "
          "`python -m chain accept-ownership`, which removes your publisher and anchorer roles")
    return 0


def cmd_accept_ownership(args) -> int:
    reg = connect_from_args(args)
    tx = reg.accept_ownership()
    print(f"{reg.sender} owns registry {reg.address} (tx {tx}); the previous owner's roles are "
          "removed: grant yourself the ones you need")
    return 0


def cmd_deployments(args) -> int:
    key = resolve_key(args.model)
    reg = connect_from_args(args)
    for d in reg.deployments_of(key):
        now = "current" if not d.superseded else f"superseded: now v{d.current_version} {d.current_key}"
        print(printable(f"'{d.name}' v{d.version} ({now})"))
    return 0


def cmd_events(args) -> int:
    reg = connect_from_args(args)
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
    reg = connect_from_args(args)
    tx = batch.anchor(reg)
    batch.write(args.batch, include_proofs="proofs" in raw)
    print(f"anchored root {batch.root.hex()} for seq {batch.first_seq}..{batch.last_seq} (tx {tx})")
    return 0


def cmd_anchor_verify(args) -> int:
    if args.frame is not None and not args.rescore:
        raise CliError("--frame is the frame to re-score: pass it with --rescore")
    rescored = None
    if args.rescore:
        v, rescored = prove_and_rescore(lambda: connect_from_args(args), args.batch, args.stream, args.seq,
                                        mask=args.mask, result=args.result, blob=args.blob,
                                        frame=args.frame)
        rescored.check()
    else:
        v = prove_frame(lambda: connect_from_args(args), args.batch, args.stream, args.seq, mask=args.mask,
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


class OneLineParser(argparse.ArgumentParser):
    """Usage errors are refusals too: one line on stderr, exit 1."""

    def error(self, message: str):
        self.exit(1, f"error: {message} (see `{self.prog} --help`)\n")


def add_registry_options(ap: argparse.ArgumentParser) -> None:
    """The options that name a registry (read by :func:`connect_from_args`)."""
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


def build_parser() -> argparse.ArgumentParser:
    ap = OneLineParser(prog="python -m chain",
                       description="VeriSeg model registry on an Ethereum chain.")
    add_registry_options(ap)
    ap.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND",
                            parser_class=OneLineParser)

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

    p = sub.add_parser("frame", help="turn a retained frame (.vsf) into a PNG any viewer opens")
    p.add_argument("frame", metavar="FRAME", help="frames/<seq>.<order>.vsf")
    p.add_argument("-o", "--output", required=True, metavar="PNG",
                   help="where to write it; name it <seq>.<order>.png to hand it to --rescore")
    p.set_defaults(fn=cmd_frame)

    keystore.add_commands(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser().parse_args(argv))


def run_command(args) -> int:
    """``args.fn(args)`` with ``-v``'s logging: every refusal is one line on stderr and
    exit status 1 (the CLIs built on this one's options share it)."""
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
