"""`biomamba eval`: not built yet (issue #5)."""

from __future__ import annotations

from biomamba.cli import NotBuiltYet


def main(argv: list[str]) -> int:
    raise NotBuiltYet("this verb arrives with issue #5")
