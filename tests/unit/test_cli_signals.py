"""The CLI's signal handling: SIGINT and SIGTERM are caught from a command's first step.

Each case runs in a child Python that signals itself, so a signal the CLI failed to catch kills
the child (return code -15), not the test run. A signal sent to oneself is delivered before
`os.kill` returns, so the orderings below are exact, not raced.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

PRELUDE = textwrap.dedent("""
    import argparse, os, signal, trio
    from meshnat.cli.commands import Output, run_command, serves_until_signal, wait_for_signal
""")


def run_child(body: str) -> tuple[int, list[dict[str, object]]]:
    script = PRELUDE + textwrap.dedent(body) + textwrap.dedent("""
        code = trio.run(run_command, argparse.Namespace(run=command), Output(True))
        raise SystemExit(code)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=False)
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines()]


def test_a_server_signalled_right_after_its_ready_line_stops_cleanly() -> None:
    # the lab's reflector test met this: SIGTERM between `ready` and the wait killed the process
    code, lines = run_child("""
        @serves_until_signal
        async def command(args, out):
            out.emit({"event": "ready"}, "ready")
            os.kill(os.getpid(), signal.SIGTERM)
            await trio.sleep(0)  # the signal is in; the wait has not begun
            await wait_for_signal()
            out.emit({"event": "stopped"}, "stopped")
            return 0
    """)
    assert code == 0
    assert [line["event"] for line in lines] == ["ready", "stopped"]


def test_a_command_that_does_not_serve_is_cancelled_by_the_first_signal() -> None:
    code, lines = run_child("""
        async def command(args, out):
            os.kill(os.getpid(), signal.SIGINT)
            await trio.sleep_forever()
    """)
    assert code == 128 + 2 and lines == []


def test_a_server_stuck_in_its_shutdown_is_cancelled_by_a_second_signal() -> None:
    code, lines = run_child("""
        @serves_until_signal
        async def command(args, out):
            os.kill(os.getpid(), signal.SIGTERM)
            await wait_for_signal()
            out.emit({"event": "stopping"}, "stopping")
            os.kill(os.getpid(), signal.SIGTERM)
            await trio.sleep_forever()
    """)
    assert code == 128 + 15 and [line["event"] for line in lines] == ["stopping"]


def test_a_command_that_returns_keeps_its_exit_code() -> None:
    code, _ = run_child("""
        async def command(args, out):
            return 3
    """)
    assert code == 3
