#!/usr/bin/env bash
# Checks the shape of the source tree (run by scripts/test.sh, so by CI):
#
#   bash scripts/check-structure.sh [--strict]
#
# - Module cycles inside a crate: module A uses module B (`crate::b::…`, `super::b::…`,
#   `use crate::{b, …}`) while B, directly or through other siblings, uses A. A cycle makes
#   the two impossible to read, test or move apart. Each cycle is printed with one reference per
#   edge (file:line). Any cycle fails the check.
# - Source files over the size limit (LIMIT lines, default 600; demo.rs is exempt): listed, and a
#   failure only with --strict.
#
# Edges are counted between siblings: a reference from a::x to b::y is an edge a → b; a module
# using its parent or its own children is not an edge. Test code (`#[cfg(test)]` modules,
# tests/ directories) is not looked at.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

exec python3 - "$@" <<'PY'
import os, re, sys

LIMIT = int(os.environ.get("LIMIT", "600"))
EXEMPT = {"crates/lifeboat/src/demo.rs"}
strict = "--strict" in sys.argv[1:]

def module_files(src):
    """Map module path (tuple) -> file, for one crate's src/ directory."""
    mods = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, src)[:-3].split(os.sep)
            if rel[-1] == "mod" or (len(rel) == 1 and rel[0] in ("lib", "main")):
                rel = rel[:-1]
            mods[tuple(rel)] = path
    return mods

def strip_tests(text):
    """Drop `#[cfg(test)] mod … { … }` blocks and comments (line numbers kept)."""
    text = re.sub(r"//[^\n]*", "", text)
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        out.append("\n" * text.count("\n", m.start(), j))
        i = j
    out.append(text[i:])
    return "".join(out)

PATH_RE = re.compile(r"\b(crate|super|self)((?:::\w+)*)(::\{)?")

def references(text):
    """Yield (line, base, [segments]) for each crate/super/self path, groups expanded one level."""
    for m in PATH_RE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        segs = [s for s in m.group(2).split("::") if s]
        if m.group(3):
            depth, j, start = 1, m.end(), m.end()
            while j < len(text) and depth:
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
            inner = text[start:j - 1]
            # Top-level names inside the braces.
            level, name = 0, ""
            for ch in inner + ",":
                if ch == "{":
                    level += 1
                elif ch == "}":
                    level -= 1
                elif ch == "," and level == 0:
                    first = re.match(r"\s*(\w+)", name)
                    if first:
                        yield line, m.group(1), segs + [first.group(1)]
                    name = ""
                    continue
                if level == 0 or ch not in "{}":
                    name += ch
        else:
            yield line, m.group(1), segs

def resolve(mods, here, base, segs):
    """The deepest existing module a path names, or None."""
    if base == "crate":
        path = ()
    elif base == "self":
        path = here
    else:
        path = here[:-1]
        while segs and segs[0] == "super":
            path, segs = path[:-1], segs[1:]
    best = path if path in mods else None
    for s in segs:
        path = path + (s,)
        if path in mods:
            best = path
        else:
            break
    return best

def sibling_edge(a, b):
    """The pair of sibling modules an a → b reference connects, or None (same, parent, child)."""
    n = 0
    while n < len(a) and n < len(b) and a[n] == b[n]:
        n += 1
    if n == len(a) or n == len(b):
        return None
    return a[: n + 1], b[: n + 1]

def cycles(edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    nodes = sorted(set(edges) | {b for bs in edges.values() for b in bs})
    def visit(v):
        index[v] = low[v] = counter[0]; counter[0] += 1
        stack.append(v); on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    sys.setrecursionlimit(10000)
    for v in nodes:
        if v not in index:
            visit(v)
    return out

failed = False
crates = sorted(d for d in os.listdir("crates") if os.path.isdir(os.path.join("crates", d, "src")))
for crate in crates:
    src = os.path.join("crates", crate, "src")
    mods = module_files(src)
    edges, where = {}, {}
    for mod, path in mods.items():
        with open(path, encoding="utf-8") as f:
            text = strip_tests(f.read())
        for line, base, segs in references(text):
            target = resolve(mods, mod, base, segs)
            if target is None:
                continue
            pair = sibling_edge(mod, target)
            if pair is None:
                continue
            a, b = pair
            edges.setdefault(a, set()).add(b)
            where.setdefault((a, b), f"{path}:{line}")
    for comp in cycles(edges):
        failed = True
        names = ", ".join("::".join(c) for c in comp)
        print(f"cycle in crate {crate}: {names}")
        for a in comp:
            for b in sorted(edges.get(a, ())):
                if b in comp:
                    print(f"    {'::'.join(a)} -> {'::'.join(b)}  ({where[(a, b)]})")

big = []
for root, _, files in os.walk("crates"):
    if f"{os.sep}tests" in root or "target" in root:
        continue
    for f in files:
        path = os.path.join(root, f)
        if f.endswith(".rs") and path not in EXEMPT:
            with open(path, encoding="utf-8") as fh:
                n = sum(1 for _ in fh)
            if n > LIMIT:
                big.append((n, path))
if big:
    print(f"source files over {LIMIT} lines:")
    for n, path in sorted(big, reverse=True):
        print(f"    {n:6d}  {path}")
    if strict:
        failed = True
if not failed:
    print("structure: no module cycles" + ("" if big else f", no file over {LIMIT} lines"))
sys.exit(1 if failed else 0)
PY
