"""List modules over 300 lines (and whether their docstring says why) and functions over 50
lines: python notes/audit_lengths.py [PATH ...] (default: cli.py bnexp experiments)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def main(paths: list[str]) -> None:
    files = []
    for p in paths or ["cli.py", "bnexp", "experiments"]:
        path = Path(p)
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    for f in files:
        text = f.read_text()
        tree = ast.parse(text)
        n = len(text.splitlines())
        doc = ast.get_docstring(tree) or ""
        if n > 300:
            why = "says why" if "300 lines" in doc else "no reason in docstring"
            print(f"module {f}: {n} lines ({why})")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 50:
                    print(f"  function {f}:{node.lineno} {node.name}: {length} lines")


if __name__ == "__main__":
    main(sys.argv[1:])
