"""The CLI as a Unix tool: every option explains itself, and a closed pipe ends it quietly."""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
from pathlib import Path

from muster_agent.cli import _spec_body, parser

ROOT = Path(__file__).resolve().parents[2]


def _options_without_help(p: argparse.ArgumentParser, path: str = "muster") -> list[str]:
    missing = []
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                missing += _options_without_help(sub, f"{path} {name}")
        elif action.option_strings and action.help is None:
            missing.append(f"{path} {'/'.join(action.option_strings)}")
    return missing


def test_every_option_has_help_text() -> None:
    assert _options_without_help(parser()) == []


def test_stop_grace_and_signal_reach_the_experiment() -> None:
    args = parser().parse_args(["enqueue", "--stop-grace", "120", "--stop-signal", "SIGINT", "--", "true"])
    body = _spec_body(args, ["true"])
    assert (body["stop_grace_s"], body["stop_signal"]) == (120, "SIGINT")
    assert "stop_grace_s" not in _spec_body(parser().parse_args(["enqueue", "--", "true"]), ["true"])


FLOOD = textwrap.dedent(
    """
    import argparse, sys
    from muster_agent import cli

    def flood(args, out):
        for i in range(1_000_000):
            print("line", i)
        return 0

    def fake():
        p = argparse.ArgumentParser()
        p.set_defaults(func=flood, json=False)
        return p

    cli.parser = fake
    sys.exit(cli.main([]))
    """
)


def test_a_reader_that_goes_away_ends_the_cli_without_a_traceback() -> None:
    proc = subprocess.Popen([sys.executable, "-c", FLOOD], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline() == b"line 0\n"
    proc.stdout.close()  # as `| head -1` does
    assert proc.wait(timeout=60) == 141
    assert proc.stderr.read() == b""
