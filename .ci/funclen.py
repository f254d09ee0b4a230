"""Fail when a function outside tests is longer than the limit (lines from `def` to its last line).

Usage: python .ci/funclen.py [--max 60] [--allow .ci/funclen-allow.txt] DIR...
The allowlist names `path::qualname` entries, each followed by ` # reason`; an entry without a
reason is an error; one that no longer matches a long function is reported, so that it is pruned.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path


def long_functions(path: Path, limit: int) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                    n = (child.end_lineno or child.lineno) - first + 1
                    if n > limit:
                        found.append((name, n))
                visit(child, name + ".")

    visit(tree, "")
    return found


def read_allowlist(path: Path) -> dict[str, str]:
    allowed: dict[str, str] = {}
    if not path.is_file():
        return allowed
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        entry, _, reason = line.partition("#")
        if not reason.strip():
            raise SystemExit(f"{path}:{i}: {entry.strip()} has no reason (write `path::name  # why`)")
        allowed[entry.strip()] = reason.strip()
    return allowed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("--max", type=int, default=60)
    ap.add_argument("--allow", type=Path, default=Path(__file__).with_name("funclen-allow.txt"))
    args = ap.parse_args(argv)
    allowed = read_allowlist(args.allow)
    used: set[str] = set()
    bad: list[str] = []
    for d in args.dirs:
        for path in sorted(d.rglob("*.py")) if d.is_dir() else [d]:
            if "tests" in path.parts:
                continue
            for name, n in long_functions(path, args.max):
                key = f"{path.as_posix()}::{name}"
                if key in allowed:
                    used.add(key)
                else:
                    bad.append(f"{key}: {n} lines (limit {args.max}): split it, or allowlist it with a reason")
    for k in allowed.keys() - used:
        print(f"note: {k} is allowlisted but no longer over {args.max} lines: remove it from {args.allow}", file=sys.stderr)
    for line in bad:
        print(line, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
