"""Refuse a pickle by its structure before anything rebuilds it: shared references that nest.

A few hundred bytes of safe opcodes can build a tuple that holds the tuple below it twice,
sixty levels deep, through the memo (``BINGET``). Rebuilding it is instant, but hashing it
(as a dict key) or walking it visits 2^60 tuples: the reader never returns. ``check_sharing``
reads the opcodes only (``pickletools.genops``, nothing is built or called) and keeps, for
every object on the unpickler's stack, how many objects it would hold were its shared
references copied out (its *expanded size*). A pickle in which that number passes
``MAX_EXPANDED`` (and far exceeds its own length) is refused at once, whatever it would
have become: no genuine checkpoint or data batch shares references like that.
"""

from __future__ import annotations

import pickle
import pickletools
from typing import BinaryIO

__all__ = ["MAX_EXPANDED", "NestedSharing", "check_sharing"]

# An expanded size no honest pickle reaches: 16 M objects (2^24), or 64 per opcode of the file
MAX_EXPANDED = 1 << 24
_CAP = 1 << 62

_MEMO_PUT = {"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"}
_MEMO_GET = {"GET", "BINGET", "LONG_BINGET"}


class NestedSharing(pickle.UnpicklingError):
    """The pickle's shared references nest so deep that rebuilding it would never end."""


def check_sharing(stream: BinaryIO, limit: int = MAX_EXPANDED) -> int:
    """Walk one pickle's opcodes from ``stream`` (left after its STOP); raise NestedSharing when
    an object's expanded size passes ``max(limit, 64 × opcodes)``. Returns the opcode count.
    Malformed pickles raise what ``pickletools.genops`` raises (ValueError, EOFError…)."""
    stack: list[int] = []
    marks: list[int] = []
    memo: dict[int, int] = {}
    count = 0
    for op, arg, _pos in pickletools.genops(stream):
        count += 1
        name = op.name
        if name == "MARK":
            marks.append(len(stack))
            continue
        if name in _MEMO_PUT:
            memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1] if stack else 1
            continue
        if name in _MEMO_GET:
            stack.append(memo.get(arg, 1))
            continue
        if name == "STOP":
            break
        before = op.stack_before
        weight = 0
        if pickletools.markobject in before:
            start = marks.pop() if marks else 0
            weight += sum(stack[start:])
            del stack[start:]
            below = before.index(pickletools.markobject)
        else:
            below = len(before)
        if below:
            weight += sum(stack[-below:])
            del stack[-below:]
        weight = min(weight + 1, _CAP)
        if weight > limit and weight > 64 * count:
            raise NestedSharing(
                "its shared references nest so deep that rebuilding it would visit more than "
                f"{limit:,} objects (from {count:,} instructions): refused by its structure"
            )
        stack.extend(weight for _ in op.stack_after)
    return count
