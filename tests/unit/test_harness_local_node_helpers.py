"""Pure pieces of the kubelet test double (:mod:`harness.local_node`).

They mirror kubelet behaviour the operator's Jobs depend on: ``$(VAR)``
expansion, the termination-message fallback limits, exit codes of killed
processes; and the harness's own path substitution for volumes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.local_node import (
    FALLBACK_LOG_BYTES,
    FALLBACK_LOG_LINES,
    exit_code,
    expand,
    path_rewriter,
    tail_for_message,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)/x", "1/x"),
        ("$(MISSING)", "$(MISSING)"),
        ("$$(A)", "$(A)"),
        ("pid=$$", "pid=$"),
        ("$$$$", "$$"),
        ("$HOME and $", "$HOME and $"),
        ("$(A", "$(A"),
        ("$(A)$(B)", "12"),
    ],
)
def test_expand_follows_the_kubelet(text: str, expected: str) -> None:
    assert expand(text, {"A": "1", "B": "2"}) == expected


def test_path_rewriter_replaces_whole_path_prefixes_longest_first() -> None:
    rewrite = path_rewriter(
        {"/tmp": Path("/pods/p/tmp"), "/etc/x": Path("/pods/p/x"), "/etc/x/y": Path("/pods/p/y")}
    )
    assert rewrite("/tmp") == "/pods/p/tmp"
    assert rewrite("--dir=/tmp/a b") == "--dir=/pods/p/tmp/a b"
    assert rewrite("cat /etc/x/y/ca.crt /etc/x/z") == "cat /pods/p/y/ca.crt /pods/p/x/z"
    assert rewrite("/tmpfile /a/tmp /etc/xy") == "/tmpfile /a/tmp /etc/xy"
    assert rewrite("'/tmp/q'") == "'/pods/p/tmp/q'"
    assert path_rewriter({})("/tmp") == "/tmp"


def test_fallback_message_is_the_last_80_lines_and_at_most_2_kib() -> None:
    short = b"".join(f"line {i}\n".encode() for i in range(100))
    message = tail_for_message(short)
    assert message.splitlines() == [f"line {i}" for i in range(20, 100)]
    assert len(message.splitlines()) == FALLBACK_LOG_LINES
    long = b"".join(b"x" * 100 + b"\n" for _ in range(50))
    assert len(tail_for_message(long).encode()) == FALLBACK_LOG_BYTES
    assert tail_for_message(b"") == ""


def test_exit_code_of_a_signalled_process_is_128_plus_the_signal() -> None:
    assert exit_code(0) == 0
    assert exit_code(3) == 3
    assert exit_code(-15) == 143
    assert exit_code(-9) == 137
