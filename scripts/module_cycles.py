#!/usr/bin/env python3
"""Lists import cycles between the engine's source files.

    python3 scripts/module_cycles.py [engine/src]

A file depends on another when it names it in a `use crate::…`/`use super::…` path or a
`crate::a::b::` path in code. Cycles are strongly connected groups of files; a module's
`mod.rs` re-exporting its children is not counted (it is the module, not a dependency).
Exits 1 when there is a cycle.
"""

import os
import re
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "engine/src"
files = {}
for dirpath, _, names in os.walk(root):
    for n in names:
        if n.endswith(".rs"):
            p = os.path.join(dirpath, n)
            mod = os.path.relpath(p, root)[:-3].replace(os.sep, "::")
            mod = re.sub(r"(::)?mod$", "", mod)
            mod = "" if mod in ("lib",) else mod
            files[mod] = p


def resolve(path_parts):
    """The longest module prefix of a path that is a file."""
    for i in range(len(path_parts), 0, -1):
        m = "::".join(path_parts[:i])
        if m in files:
            return m
    return None


edges = {m: set() for m in files}
for mod, p in files.items():
    text = open(p, encoding="utf-8").read()
    # Drop test modules (tests may use anything) and comments (doc links are not imports).
    text = re.split(r"#\[cfg\(test\)\]\s*mod tests", text)[0]
    text = re.sub(r"//[^\n]*", "", text)
    here = mod.split("::") if mod else []
    for m in re.finditer(r"\b(crate|super)((?:::\w+)+)", text):
        kind, rest = m.group(1), m.group(2).strip(":").split("::")
        # `super` is the parent of the file's module, for `a/b.rs` and `a/b/mod.rs` alike.
        parts = rest if kind == "crate" else here[:-1] + rest
        target = resolve(parts)
        if target is not None and target != mod:
            edges[mod].add(target)

# Tarjan's strongly connected components.
index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]


def strong(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in edges[v]:
        if w not in index:
            strong(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop()
            on.discard(w)
            comp.append(w)
            if w == v:
                break
        if len(comp) > 1:
            sccs.append(sorted(comp))


sys.setrecursionlimit(10000)
for v in files:
    if v not in index:
        strong(v)
for c in sccs:
    print("cycle:", " <-> ".join(m or "lib" for m in c))
print(f"{len(files)} files, {sum(map(len, edges.values()))} dependencies, {len(sccs)} cycles")
sys.exit(1 if sccs else 0)
