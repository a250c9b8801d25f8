"""Which EVM opcodes a contract's bytecode uses, read by walking it (PUSH data skipped).

The registry is compiled for the Paris EVM so that every mainstream node and chain runs
it; the opcodes later forks added must not appear in its code. A byte scan is not enough:
0x5f inside PUSH data or in the metadata trailer is data, not an instruction.
"""

from __future__ import annotations

from typing import Iterator

__all__ = ["POST_PARIS_OPCODES", "strip_metadata", "opcodes", "post_paris_opcodes"]

# opcodes added after Paris (the Merge): Shanghai's PUSH0, Cancun's MCOPY, transient
# storage and blob opcodes; a node on an older EVM answers them with an error
POST_PARIS_OPCODES = {0x5F: "PUSH0", 0x5E: "MCOPY", 0x5C: "TLOAD", 0x5D: "TSTORE",
                      0x49: "BLOBHASH", 0x4A: "BLOBBASEFEE"}

PUSH1, PUSH32 = 0x60, 0x7F


def strip_metadata(runtime: bytes) -> bytes:
    """The runtime code without solc's CBOR metadata trailer (its length is the last two
    bytes, big-endian); unchanged when the trailer does not fit."""
    if len(runtime) < 2:
        return runtime
    n = int.from_bytes(runtime[-2:], "big")
    if n + 2 > len(runtime) or runtime[-2 - n] & 0xE0 != 0xA0:   # a CBOR map starts the trailer
        return runtime
    return runtime[:-2 - n]


def opcodes(code: bytes) -> Iterator[tuple[int, int]]:
    """(offset, opcode) of each instruction; the data bytes of PUSH1..PUSH32 are skipped."""
    pc = 0
    while pc < len(code):
        op = code[pc]
        yield pc, op
        pc += 1 + (op - PUSH1 + 1 if PUSH1 <= op <= PUSH32 else 0)


def post_paris_opcodes(runtime: bytes, creation: bytes | None = None) -> dict[str, int]:
    """Name -> count of post-Paris instructions in a contract's runtime code (metadata
    stripped) and, when given, its constructor (the creation code before the runtime)."""
    parts = [strip_metadata(runtime)]
    if creation is not None:
        parts.append(creation[:len(creation) - len(runtime)] if creation.endswith(runtime)
                     else creation)
    found: dict[str, int] = {}
    for code in parts:
        for _, op in opcodes(code):
            name = POST_PARIS_OPCODES.get(op)
            if name:
                found[name] = found.get(name, 0) + 1
    return found
