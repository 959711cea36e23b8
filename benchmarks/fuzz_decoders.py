"""Fuzz every meshnat decoder and datagram entry point; print the count of each outcome.

    python -m benchmarks.fuzz_decoders [--inputs 1000000] [--seed 1]    (or `make fuzz`)

Inputs are spread round-robin over the targets of `tests/support/decoders.py` (every message
type of every protocol, the datagram parsers, the reflector's datagram answer, the UDP source
rule, the signed-record chain). Each input is random bytes, a mutated golden frame (the
tests/vectors/*.hex files, and real signed records, as seeds) or a CBOR map built at random
around a valid envelope (tags, floats, deep nesting and huge integers included).

Allowed outcomes: decoded (or answered, possible, dropped), or a RemoteProtocolError subclass
from a decoder (each counted by name). A datagram entry point that raises, or a decoder that
raises anything else, or any input that takes over 50 ms of CPU, is a failure: it is printed with
its input and the exit status is 1. The slowest input per target is printed as CPU time
(time.process_time), not wall clock.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable

import cbor2
from tests.support.decoders import Target, message_types, seeds, targets

from meshnat.errors import RemoteProtocolError
from meshnat.wire import DATAGRAM_MAGIC

MAX_FAILURES_SHOWN = 10
MAX_CPU = 0.050
"""An input that takes longer (CPU time) is a failure too: hostile input must cost nothing."""
INTERESTING = [0x00, 0x17, 0x18, 0x19, 0x1A, 0x1B, 0x1C, 0x1F, 0x20, 0x3B, 0x40, 0x58, 0x5B,
               0x5F, 0x60, 0x7B, 0x7F, 0x80, 0x98, 0x9B, 0x9F, 0xA0, 0xB8, 0xBB, 0xBF, 0xC0,
               0xC2, 0xC3, 0xD8, 0xD9, 0xDB, 0xDC, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0xFA,
               0xFB, 0xFF]


class Inputs:
    """Random, mutated and structured inputs from one seeded generator."""

    def __init__(self, rng: random.Random, type_codes: list[int]) -> None:
        self.rng = rng
        self.type_codes = type_codes

    def random_bytes(self) -> bytes:
        rng = self.rng
        size = rng.choice((rng.randrange(0, 64), rng.randrange(0, 1300), rng.randrange(0, 4200)))
        return rng.randbytes(size)

    def mutate(self, seed: bytes, pool: list[bytes]) -> bytes:
        rng = self.rng
        data = bytearray(seed)
        for _ in range(rng.choice((1, 1, 2, 3, 8))):
            op = rng.randrange(8)
            at = rng.randrange(len(data) + 1)
            if op == 0 and data:  # set a byte
                data[min(at, len(data) - 1)] = rng.randrange(256)
            elif op == 1 and data:  # an interesting CBOR head
                data[min(at, len(data) - 1)] = rng.choice(INTERESTING)
            elif op == 2:  # insert bytes
                data[at:at] = rng.randbytes(rng.choice((1, 2, 4, 8, 9, 32)))
            elif op == 3:  # delete a range
                del data[at:at + rng.randrange(1, 16)]
            elif op == 4:  # truncate
                del data[at:]
            elif op == 5:  # duplicate a slice
                data[at:at] = data[at:at + rng.randrange(1, 64)] * rng.randrange(1, 8)
            elif op == 6:  # splice with another seed
                other = rng.choice(pool)
                cut = rng.randrange(len(other) + 1)
                data = data[:at] + bytearray(other[cut:])
            elif data:  # flip a bit
                data[min(at, len(data) - 1)] ^= 1 << rng.randrange(8)
        return bytes(data)

    def value(self, depth: int = 0) -> object:
        rng = self.rng
        kind = rng.randrange(14 if depth < 6 else 9)
        match kind:
            case 0:
                return rng.randrange(-(2**70), 2**70)
            case 1:
                return rng.randrange(0, 70000)
            case 2:
                return rng.randbytes(rng.choice((0, 4, 12, 16, 32, 600)))
            case 3:
                return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(40)))
            case 4:
                return rng.choice((True, False, None, float("nan"), 1.5, -0.0))
            case 5:
                return cbor2.CBORTag(rng.choice((0, 1, 2, 3, 28, 29, 37, 258, 55799)),
                                     rng.randrange(100))
            case 6:
                return 10 ** rng.randrange(19, 400)
            case 7:
                return [rng.randbytes(rng.choice((4, 16, 5))), rng.randrange(-1, 70000)]
            case 8:
                return rng.choice((rng.randrange(0, 2**64), 10 ** rng.randrange(4290, 4500)))
            case 9 | 10:
                return [self.value(depth + 1) for _ in range(rng.randrange(5))]
            case 11:
                return {rng.randrange(-2, 20): self.value(depth + 1)
                        for _ in range(rng.randrange(5))}
            case _:
                return [self.value(depth + 1)]

    def structured(self, kind: int | None) -> bytes:
        """A map with a valid envelope (mostly, of type `kind` half the time) and random fields
        from key 8 up."""
        rng = self.rng
        code = kind if kind is not None and rng.random() < 0.5 else rng.choice(
            (rng.randrange(0, 80), *self.type_codes))
        item: dict[object, object] = {0: rng.choice((1, 1, 1, 2, 0)),
                                      1: code,
                                      2: rng.choice((bytes(16), rng.randbytes(15)))}
        for key in range(8, 8 + rng.randrange(8)):
            item[key] = self.value()
        sharing = rng.random() < 0.2
        if sharing:  # shared references (tags 28/29): small on the wire, huge once expanded
            leaf = [rng.randbytes(rng.randrange(1, 1000))]
            inner = [leaf] * rng.randrange(1, 150)
            item[rng.choice((8, 9, 10))] = [inner] * rng.randrange(1, 150)
        try:
            return cbor2.dumps(item, value_sharing=sharing)
        except (ValueError, TypeError, OverflowError):
            return cbor2.dumps({0: 1})


    def reshape(self, seed: bytes) -> bytes:
        """A golden frame with one field replaced, removed or added (still well-formed CBOR,
        so the message's own field checks are what is tested)."""
        rng = self.rng
        magic, frame = (seed[:4], seed[4:]) if seed[:4] == DATAGRAM_MAGIC else (b"", seed)
        try:
            item = cbor2.loads(frame)
        except (cbor2.CBORDecodeError, ValueError):
            return seed
        if type(item) is not dict:
            return seed
        keys = list(item)
        roll = rng.random()
        if roll < 0.7 and keys:
            item[rng.choice(keys)] = self.value()
        elif roll < 0.85 and keys:
            del item[rng.choice(keys)]
        else:
            item[rng.randrange(-1, 20)] = self.value()
        try:
            return magic + cbor2.dumps(item)
        except (ValueError, TypeError, OverflowError):
            return seed


def _generate(gen: Inputs, target: Target, pool: list[bytes], everything: list[bytes]) -> bytes:
    roll = gen.rng.random()
    if roll < 0.15:
        return gen.random_bytes()
    if roll < 0.25 and not target.name.startswith("record:"):
        data = gen.structured(target.kind)
        return (DATAGRAM_MAGIC + data) if target.datagram else data
    if roll < 0.50 and not target.name.startswith("record:"):
        return gen.reshape(gen.rng.choice(pool))
    return gen.mutate(gen.rng.choice(pool), everything)


def run(inputs: int, seed: int, report: Callable[[str], None] = print) -> int:
    rng = random.Random(seed)
    gen = Inputs(rng, sorted({int(cls.TYPE) for cls in message_types()}))
    all_targets = targets()
    pools = seeds(all_targets)
    everything = [s for group in pools.values() for s in group]
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    slowest: dict[str, float] = defaultdict(float)
    failures: list[tuple[str, bytes, str]] = []
    started_wall, started_cpu = time.perf_counter(), time.process_time()
    for i in range(inputs):
        target = all_targets[i % len(all_targets)]
        data = _generate(gen, target, pools[target.name], everything)
        before = time.process_time()
        try:
            outcome = target.run(data)
        except RemoteProtocolError as exc:
            outcome = type(exc).__name__
            if target.datagram:
                failures.append((target.name, data, traceback.format_exc()))
                outcome = "FAILURE"
        except Exception:
            failures.append((target.name, data, traceback.format_exc()))
            outcome = "FAILURE"
        spent = time.process_time() - before
        if spent > MAX_CPU:
            failures.append((target.name, data, f"took {spent * 1e3:.0f} ms of CPU"))
            outcome = "SLOW"
        slowest[target.name] = max(slowest[target.name], spent)
        counts[target.name][outcome] += 1
    wall, cpu = time.perf_counter() - started_wall, time.process_time() - started_cpu

    total: Counter[str] = Counter()
    report(f"{'target':45} {'inputs':>8} {'slowest ms':>10}  outcomes")
    for target in all_targets:
        c = counts[target.name]
        total.update(c)
        outcomes = ", ".join(f"{k} {v}" for k, v in c.most_common())
        report(f"{target.name:45} {sum(c.values()):8d} {slowest[target.name] * 1e3:10.2f}  "
               f"{outcomes}")
    report("")
    report(f"{inputs} inputs over {len(all_targets)} targets in {wall:.1f} s "
           f"({cpu:.1f} s CPU, {inputs / wall:,.0f} inputs/s), seed {seed}")
    report("totals: " + ", ".join(f"{k} {v}" for k, v in total.most_common()))
    for name, data, trace in failures[:MAX_FAILURES_SHOWN]:
        report(f"\nFAILURE in {name}: input {data[:120].hex()}{'...' if len(data) > 120 else ''}")
        report(trace)
    if failures:
        kinds = Counter((name, trace.strip().splitlines()[-1][:100]) for name, _, trace in failures)
        report(f"{len(failures)} failures:")
        for (name, last), n in kinds.most_common():
            report(f"  {n:6d}  {name}: {last}")
        return 1
    report("no failures")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sys.exit(run(args.inputs, args.seed))


if __name__ == "__main__":
    main()
