#!/usr/bin/env python3
"""Fail when the modules of a crate depend on each other in a cycle.

Usage: scripts/check_module_cycles.py CRATE_SRC_DIR...

A module depends on another when its code (comments excluded) names a path into it:
`crate::a::b` or `super::b`. A parent and its own submodules are one unit (a `mod.rs`
re-exporting its children is not a cycle). Cycles are reported twice over: between
files, and between the top-level modules of the crate, where `config::events -> events`
and `events::bus -> config` are a cycle even though no two files point at each other.

Hand-written (a few dozen lines of Python) rather than `cargo modules dependencies
--acyclic`: that tool compiles rust-analyzer's crates, many minutes on two cores, for a
check this small. The textual reading can miss a path built by a macro; it does not
invent edges.
"""
import os
import re
import sys


def modules(src):
    mods = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, src)[:-3].split(os.sep)
            if rel[-1] in ("mod", "lib", "main"):
                rel = rel[:-1]
            mods["::".join(rel)] = path
    return mods


def resolve(path, mods):
    parts = [p for p in path.split("::") if p]
    for n in range(len(parts), 0, -1):
        m = "::".join(parts[:n])
        if m in mods:
            return m
    return None


def related(a, b):
    return a == b or a.startswith(b + "::") or b.startswith(a + "::")


def edges(src):
    mods = modules(src)
    graph = {m: set() for m in mods}
    for m, path in mods.items():
        with open(path) as fh:
            code = "\n".join(l for l in fh.read().split("\n") if not l.strip().startswith("//"))
        here = m.split("::") if m else []
        # `super` of a file module is its parent; of a mod.rs it is the grandparent.
        parent = here[:-1]
        for hit in re.finditer(r"\bcrate::([A-Za-z_][\w:]*)", code):
            t = resolve(hit.group(1), mods)
            if t is not None and not related(m, t):
                graph[m].add(t)
        for hit in re.finditer(r"\bsuper::([A-Za-z_][\w:]*)", code):
            t = resolve("::".join(parent + [hit.group(1)]), mods)
            if t is not None and not related(m, t):
                graph[m].add(t)
    return graph


def cycles(graph):
    """Strongly connected components with more than one member (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
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
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def top(m):
    return m.split("::")[0]


def main(dirs):
    found = 0
    for src in dirs:
        graph = edges(src)
        for comp in cycles(graph):
            found += 1
            print(f"{src}: modules in a cycle: {', '.join(comp)}")
            for a in comp:
                for b in sorted(graph[a] & set(comp)):
                    print(f"    {a} -> {b}")
        tops = {}
        for a, bs in graph.items():
            tops.setdefault(top(a), set()).update(top(b) for b in bs if top(b) != top(a))
        for comp in cycles(tops):
            found += 1
            print(f"{src}: top-level modules in a cycle: {', '.join(comp)}")
            for a, bs in sorted(graph.items()):
                for b in sorted(bs):
                    if top(a) in comp and top(b) in comp and top(a) != top(b):
                        print(f"    {a} -> {b}")
    if found:
        print("break each cycle: move the shared type into a leaf module both can use")
        return 1
    print(f"no module cycles in {len(dirs)} crates")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
