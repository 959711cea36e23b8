"""`meshnat discover` against liars that answer with addresses of both families: the honest
answer and one JSON line, never a traceback (the tally used to compare IPv4 with IPv6)."""

from __future__ import annotations

import json

import pytest
import trio

from meshnat.cli import build_parser
from meshnat.cli.commands import Output, run_discover
from meshnat.endpoint import Endpoint
from meshnat.reflection import ReflectionService
from tests.support.fake_reflectors import Behaviour, FakeReflector, nodes

LIES = (Endpoint.parse("203.0.113.9:9"), Endpoint.parse("[2001:db8::9]:9"))


async def test_discover_prints_the_honest_answer_as_json_despite_mixed_family_liars(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with nodes(5) as reflectors:
        for node in reflectors[:3]:
            await node.mount(ReflectionService())
        for node, lie in zip(reflectors[3:], LIES, strict=True):
            await node.mount(FakeReflector(Behaviour.LIE, lie))
        argv = ["discover", "--json", "--no-group", "--timeout", "5"]
        for node in reflectors:
            argv += ["--reflector", str(next(a for a in node.addrs if "/udp/" in str(a)))]
        with trio.fail_after(20):
            code = await run_discover(build_parser().parse_args(argv), Output(True))
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0
    assert answer["address"].startswith("127.0.0.1:") and answer["voters"] == 5
    assert sorted(answer["votes"].values()) == [1, 1, 3]
    assert sorted(d["observed"] for d in answer["dissent"]) == sorted(str(e) for e in LIES)
