"""Text shown to a person: strings from a blob's card, the chain or a request made safe for
a terminal or a log (``printable``), and suggested commands safe to copy into a shell
(``shell_command``).

A card's name, a revocation reason or a deployment name is anyone's text: printed raw, an
``ESC[2J`` clears the operator's terminal, a newline forges a log line and a right-to-left
override reorders what is read. Every CLI refusal and log line goes through ``printable``
(``one_line`` and ``first_line`` call it; the flow's and the chain CLI's log handlers carry
``PrintableLogs``).

    print(printable(f"'{card.name}' ..."))     # ESC -> \\x1b, newline -> \\n
    f"if you trust it: {shell_command('python', '-m', 'chain', 'deploy', name, path)}"
"""
from __future__ import annotations

import logging
import re
import shlex

__all__ = ["printable", "shell_command", "PrintableLogs"]

# C0 and C1 controls, DEL, and the bidirectional overrides and isolates
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(m: re.Match) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def printable(text) -> str:
    """``text`` with every control character (newlines and tabs too) and bidirectional
    override written as a visible escape (``\\x1b``, ``\\u202e``); the rest as it is."""
    return _UNSAFE.sub(_escape, str(text))


def shell_command(*argv) -> str:
    """A command line to suggest in a message: each word quoted for a POSIX shell, so a name
    that came from a card or the chain is one argument when pasted, never more commands."""
    return " ".join(shlex.quote(str(a)) for a in argv)


class PrintableLogs(logging.Filter):
    """A handler's filter: the record's message made ``printable`` (one line; tracebacks,
    formatted apart by the handler, are kept)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = printable(record.getMessage()), ()
        return True
