"""Print the README's verdict-table rows from a `bnexp reproduce` output directory.

    python notes/readme_verdicts.py RUNS_DIR

Each row: experiment, claim, verdict, every condition as "name: effect [interval] vs threshold ->
outcome" (the report.md condition tables, verbatim), wall time and compile seconds (summary.json).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def sections(md: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    name, inside = None, False
    for line in md.splitlines():
        m = re.match(r"^## ([\w-]+): ", line)
        if m:
            name, inside = m.group(1), False
            out[name] = []
        elif line.startswith("#"):
            inside = line.startswith("### Conditions")
        elif name and inside and line.startswith("| ") and not line.startswith("| condition"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            if len(cells) >= 5 and not set(cells[0]) <= {"-"}:
                out[name].append(f"{cells[0]}: {cells[1]} {cells[2]} vs {cells[3]} -> {cells[4]}")
    return out


def main(root: Path) -> None:
    conds = sections((root / "report.md").read_text())
    total = comp = 0.0
    for run in sorted(p for p in root.iterdir() if (p / "summary.json").is_file()):
        s = json.loads((run / "summary.json").read_text())
        t = s.get("timing", {})
        wall, c = t.get("wall_time_seconds", 0.0), t.get("compile_seconds", 0.0)
        total, comp = total + wall, comp + c
        name, v = s["experiment"], s["verdict"]
        text = "; ".join(conds.get(name, []))
        print(
            f"| `{name}` | {v['claim']} | **{v['outcome']}** | {text} | {wall:.0f} s ({c:.0f} s compiling) |"
        )
    print(f"\ntotal {total:.0f} s, compiling {comp:.0f} s ({100 * comp / total:.0f}%)")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
