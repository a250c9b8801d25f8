"""``python -m web``: the audit page over a finished run's outputs.

    python -m web audit OUT_DIR [--host 127.0.0.1] [--port 8081] [--blob BLOB] [--chain ... --home ...]

The registry options are ``python -m chain``'s; every refusal is one line on stderr and
exit status 1, as there.
"""
from __future__ import annotations

import argparse
from typing import Optional

from chain.cli import CliError, OneLineParser, add_registry_options, connect_from_args, run_command

__all__ = ["build_parser", "main"]


def cmd_audit(args) -> int:
    try:
        from .audit import run_audit   # aiohttp: the optional extra
    except ImportError as e:
        raise CliError(f"the audit page needs the web extra ({e}): pip install 'veriseg[web]'") from None
    return run_audit(args.out_dir, connect_from_args(args), host=args.host, port=args.port,
                     blob=args.blob, token=args.config.web_token)


def build_parser() -> argparse.ArgumentParser:
    ap = OneLineParser(prog="python -m web", description="VeriSeg's pages.")
    ap.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND", parser_class=OneLineParser)
    p = sub.add_parser("audit", help="serve the audit page over a run's outputs")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (beyond loopback only with VERISEG_WEB_TOKEN)")
    p.add_argument("--port", type=int, default=8081, help="0: any free port")
    p.add_argument("--blob", default=None, help="the model's blob (class names and colours)")
    add_registry_options(p)
    p.set_defaults(fn=cmd_audit)
    return ap


def main(argv: Optional[list[str]] = None) -> int:
    return run_command(build_parser().parse_args(argv))
