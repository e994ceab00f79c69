"""`make bench-check`: run the benchmarks behind the Speed page (docs/speed.md) and exit 1 if any
figure misses its target, or differs from the number the documentation prints by more than TOLERANCE.

Each benchmark prints, as its last line, `BENCH-CHECK {json}`: a list of checks, each the
figure measured, the target the Speed page states and whether it was met (see `emit`). A check that
backs a number the documentation prints names it (`readme="serve.single"`), and the page marks that
number with the same name in a comment right after it (`**2.96×**<!-- serve.single -->`): the
number measured must be within TOLERANCE of the number printed, so a figure cannot go stale. This
script runs every benchmark in turn (they are heavy: about 15 minutes on 2 cores), prints one
line per check and exits 0 only if every target is met. It is not part of `make test`: timings
belong to a quiet machine, never to an assertion in a test.

Run: .venv/bin/python scripts/bench_check.py [--only bench_loop.py,bench_sweep.py]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
PREFIX = "BENCH-CHECK "
BENCHMARKS = (
    "bench_loop.py",
    "bench_models.py",
    "bench_demo.py",
    "bench_sweep.py",
    "bench_asha.py",
    "bench_stream.py",
    "bench_stream_once.py",
    "bench_grid.py",
    "bench_serve.py",
    "bench_serve_log.py",
    "bench_sharded.py",
    "bench_averaging.py",
    "bench_update_several.py",
    "bench_scale.py",
    "bench_start.py",
)


TOLERANCE = 0.25  # how far a measured figure may be from the README's printed one (the larger over the smaller)
README = os.path.join(os.path.dirname(HERE), "README.md")
DOCS = os.path.join(os.path.dirname(HERE), "docs")


def manual() -> str:
    """The README and every page of the documentation site, as one text (figures are marked
    where they are printed, mostly on docs/speed.md)."""
    paths = [README, *sorted(os.path.join(d, f) for d, _, fs in os.walk(DOCS) for f in fs if f.endswith(".md"))]
    texts = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            texts.append(f.read())
    return "\n".join(texts)


_PRINTED = re.compile(r"\*\*(?:[^*]*?)([-+]?[\d,]*\.?\d+)[^*]*\*\*<!-- ([\w.-]+) -->")


def check(
    what: str, figure: float, target: float, unit: str = "x", *, at_most: bool = False, readme: str | None = None
) -> dict[str, Any]:
    """One figure against its target: at least `target` (a speed-up), or at most (`at_most`: a
    cost, e.g. accuracy points lost or MiB). `readme` names the README number it backs."""
    met = figure <= target if at_most else figure >= target
    out = {"what": what, "figure": round(figure, 4), "target": ("<= " if at_most else ">= ") + f"{target}{unit}",
           "met": bool(met)}  # fmt: skip
    if readme is not None:
        out["readme"] = readme
    return out


def printed(text: str | None = None) -> dict[str, float]:
    """The documentation's marked numbers by name (`**2.96×**<!-- serve.single -->` is serve.single: 2.96)."""
    if text is None:
        text = manual()
    return {name: float(number.replace(",", "")) for number, name in _PRINTED.findall(text)}


def against_readme(c: dict[str, Any], numbers: dict[str, float]) -> str | None:
    """Why a check's figure disagrees with the README's printed number, or None."""
    name = c.get("readme")
    if name is None:
        return None
    if name not in numbers:
        return f"the README marks no number <!-- {name} -->"
    shown, measured = numbers[name], c["figure"]
    if shown == measured:
        return None
    near = shown * measured > 0 and max(shown / measured, measured / shown) - 1 <= TOLERANCE  # either way
    if near:
        return None
    return f"the README prints {shown:g}; measured {measured:g} is more than {TOLERANCE:.0%} away"


def emit(checks: list[dict[str, Any]]) -> None:
    """Print the checks as this benchmark's last line, for `bench_check.py` to read."""
    print(PREFIX + json.dumps(checks), flush=True)


# Arguments a script runs with here (the README's figure it backs is measured so).
ARGS = {"bench_scale.py": ["--sizes", "4", "--modes", "default"]}


def run(script: str) -> list[dict[str, Any]]:
    """The checks `script` printed, run as the README's "reproduce" column runs it."""
    proc = subprocess.run([sys.executable, os.path.join(HERE, script), *ARGS.get(script, [])], capture_output=True,
                          text=True)  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith(PREFIX)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return [{"what": f"{script} ran", "figure": proc.returncode, "target": "exit 0", "met": False,
                 "error": tail[0][:300]}]  # fmt: skip
    return json.loads(lines[-1][len(PREFIX) :])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default="", help="comma-separated scripts of the list (default: all)")
    args = p.parse_args()
    chosen = [s for s in args.only.split(",") if s] or list(BENCHMARKS)
    unknown = [s for s in chosen if s not in BENCHMARKS]
    if unknown:
        p.error(f"not a benchmark of the Speed table: {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    numbers = printed()
    missed = stale = 0
    for script in chosen:
        print(f"{script}:", flush=True)
        for c in run(script):
            missed += not c["met"]
            differs = against_readme(c, numbers)
            stale += differs is not None
            mark = "ok    " if c["met"] and differs is None else "MISSED" if not c["met"] else "STALE "
            line = f"  {mark} {c['what']}: {c['figure']} (target {c['target']}) {c.get('error', '')}".rstrip()
            print(line + (f"; {differs}" if differs else ""), flush=True)
    print("every target met, every figure as printed" if not missed and not stale
          else f"{missed} target(s) missed, {stale} figure(s) not as the README prints them")  # fmt: skip
    return 1 if missed or stale else 0


if __name__ == "__main__":
    sys.exit(main())
