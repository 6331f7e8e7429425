"""`biomamba serve`: not built yet (issue #7)."""

from __future__ import annotations

from biomamba.cli import NotBuiltYet


def main(argv: list[str]) -> int:
    raise NotBuiltYet("this verb arrives with issue #7")
