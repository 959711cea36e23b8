"""A well-formedness pre-scan of one CBOR frame, before any object is built.

cbor2 decodes everything CBOR can say: tags (shared references, bignums, dates, regexps,
...), floats, simple values. Meshnat's messages use none of them, only unsigned and negative
integers, byte and text strings, arrays and maps of definite length. `check_frame` walks the
item headers of a frame (each step consumes at least one byte, so the scan is bounded by the
frame's length) and refuses, with `MalformedMessage`, anything else:

- every tag (major type 6): shared references (28/29) would let a 4 KiB frame stand for a
  structure of gigabytes, bignums (2/3) for integers beyond 64 bits;
- every float and simple value (major type 7), the break code and indefinite lengths;
- reserved additional-information values (28-30);
- a string, array or map that declares more bytes or items than the frame has left;
- containers nested deeper than `max_depth`;
- anything but exactly one item (trailing bytes).

Only then does cbor2 build objects, and it can build no more than the frame's worth. Error
messages name the offset and the rule, never the value.
"""

from __future__ import annotations

from meshnat.errors import MalformedMessage

__all__ = ["check_frame"]

_TAG_OR_SIMPLE = 0xC0
"""Initial bytes from here on are major type 6 (tags) and 7 (floats, simple values, break)."""


def check_frame(data: bytes, *, max_depth: int) -> None:
    """Raise MalformedMessage unless `data` is exactly one CBOR item meshnat may decode."""
    end = len(data)
    pos = 0
    pending = [1]  # items still to read in each open container; the frame itself is one item
    left = 1  # pending[-1], kept in a local while its container is the innermost one
    while True:
        if not left:
            if len(pending) == 1:
                break
            pending.pop()
            left = pending[-1]
            continue
        left -= 1
        if pos >= end:
            raise MalformedMessage(f"CBOR item truncated at byte {pos}")
        initial = data[pos]
        pos += 1
        if initial >= _TAG_OR_SIMPLE:
            raise MalformedMessage(
                f"CBOR {'tag' if initial < 0xE0 else 'float or simple value'} at byte "
                f"{pos - 1}: meshnat uses none")
        info = initial & 0x1F
        if info < 24:
            arg = info
        elif info == 24:
            if pos >= end:
                raise MalformedMessage(f"CBOR item truncated at byte {pos}")
            arg = data[pos]
            pos += 1
        elif info < 28:
            size = 1 << (info - 24)
            if pos + size > end:
                raise MalformedMessage(f"CBOR item truncated at byte {pos}")
            arg = int.from_bytes(data[pos:pos + size], "big")
            pos += size
        else:
            raise MalformedMessage(
                f"CBOR indefinite length or reserved encoding at byte {pos - 1}")
        major = initial >> 5
        if major < 2:  # unsigned and negative integers: the head is all there is
            continue
        if major < 4:  # byte and text strings
            if arg > end - pos:
                raise MalformedMessage(f"CBOR string at byte {pos} is longer than the frame")
            pos += arg
            continue
        items = arg if major == 4 else 2 * arg  # arrays, maps
        if items > end - pos:  # every item takes at least one byte
            raise MalformedMessage(
                f"CBOR container at byte {pos} declares more items than the frame holds")
        if len(pending) > max_depth:
            raise MalformedMessage(f"CBOR nesting deeper than {max_depth}")
        pending[-1] = left
        pending.append(items)
        left = items
    if pos != end:
        raise MalformedMessage(f"{end - pos} trailing bytes")
