"""A plain fixed-width table for stdout (the CLI verbs' summaries)."""

from __future__ import annotations

from typing import Any


def print_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A plain fixed-width table for stdout; returns the text it printed."""
    if not rows:
        return ""
    columns = columns or list(rows[0])

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    text = "\n".join(lines)
    print(text)
    return text
