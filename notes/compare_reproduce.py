"""Compare two `bnexp reproduce --json` captures (and the summary.json of every run they list)
apart from timing fields and paths: python notes/compare_reproduce.py BEFORE.json AFTER.json.

Dropped: keys naming a time, duration, date or path (time, seconds, wall, date, created, argv,
run_dir, path, out, index, reports). Strings: the output directory and the run directories'
timestamps are replaced by placeholders. Prints the differences; exit 1 if any."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

DROP = ("time", "seconds", "wall", "date", "created", "argv", "run_dir", "path", "index")
DROP_EXACT = {"out", "reports", "run_dirs", "started", "finished", "git", "host", "python"}


def clean(x, out: str):
    if isinstance(x, dict):
        return {
            k: clean(v, out)
            for k, v in x.items()
            if k not in DROP_EXACT and not any(d in k.lower() for d in DROP)
        }
    if isinstance(x, list):
        return [clean(v, out) for v in x]
    if isinstance(x, str):
        x = x.replace(out, "<OUT>")
        return re.sub(r"\d{8}-\d{6}-", "<STAMP>-", x)
    return x


def load(path: str) -> tuple[dict, dict]:
    doc = json.loads(Path(path).read_text())
    out = doc["out"]
    runs = {}
    for e in doc["experiments"]:
        if e["run_dir"]:
            runs[e["name"]] = clean(
                json.loads((Path(e["run_dir"]) / "summary.json").read_text()), out
            )
    return clean(doc, out), runs


def diff(a, b, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{where}/{k}: only in {'after' if k not in a else 'before'}")
            else:
                out += diff(a[k], b[k], f"{where}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in diff(x, y, f"{where}[{i}]")
        ]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def trials(path: str) -> dict[str, dict]:
    """Every trial's saved history arrays, by experiment and trial id."""
    import numpy as np

    doc = json.loads(Path(path).read_text())
    got = {}
    for e in doc["experiments"]:
        for f in sorted(Path(e["run_dir"] or "/nonexistent").glob("trials/*.npz")):
            with np.load(f) as z:
                got[f"{e['name']}/{f.stem}"] = {k: z[k] for k in z.files}
    return got


def diff_trials(a: dict, b: dict) -> list[str]:

    out = [f"trial {k}: only in one capture" for k in sorted(set(a) ^ set(b))]
    for k in sorted(set(a) & set(b)):
        if a[k].keys() != b[k].keys():
            out.append(f"trial {k}: keys differ")
        for name in sorted(a[k].keys() & b[k].keys()):
            x, y = a[k][name], b[k][name]
            if x.shape != y.shape or x.tobytes() != y.tobytes():
                out.append(f"trial {k}: {name} differs")
    return out


def main() -> int:
    (da, ra), (db, rb) = load(sys.argv[1]), load(sys.argv[2])
    ta, tb = trials(sys.argv[1]), trials(sys.argv[2])
    found = diff(da, db, "reproduce") + diff(ra, rb, "summary") + diff_trials(ta, tb)
    for line in found:
        print(line)
    n = sum(len(json.dumps(v)) for v in ra.values())
    arrays = sum(len(t) for t in ta.values())
    print(
        f"{len(found)} difference(s); {len(ra)} run summaries ({n} characters of JSON) and "
        f"{len(ta)} trials ({arrays} history arrays, byte for byte) compared"
    )
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
