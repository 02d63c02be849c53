#!/usr/bin/env python3
"""Fail when the top-level modules of a crate import each other in a cycle.

For every crate of the workspace (a folder with Cargo.toml and src/), the
top-level modules are src/NAME.rs and src/NAME/mod.rs. Module A depends on
module B when a file of A (src/A.rs or anything under src/A/) names
`crate::B`, or names `B::` inside a `use crate::{...}` group. The strongly
connected components of that graph with more than one module are cycles;
each is printed with one path through it, and the exit code is 1.

    scripts/check-module-cycles.py [ROOT]     # the workspace (default: .)
    scripts/check-module-cycles.py --self-test
"""
import os
import re
import sys
import tempfile

USE_GROUP = re.compile(r"use\s+crate::\{([^;]*)\};", re.S)
CRATE_PATH = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
COMMENT = re.compile(r"//[^\n]*")


def modules(src):
    mods = {}
    for name in os.listdir(src):
        path = os.path.join(src, name)
        if name.endswith(".rs") and name not in ("lib.rs", "main.rs"):
            mods.setdefault(name[:-3], []).append(path)
        elif os.path.isdir(path) and name != "bin":
            files = []
            for dirpath, _, names in os.walk(path):
                files += [os.path.join(dirpath, n) for n in names if n.endswith(".rs")]
            mods.setdefault(name, []).extend(files)
    return mods


def edges(mods):
    graph = {m: set() for m in mods}
    for m, files in mods.items():
        for f in files:
            with open(f, encoding="utf-8") as fh:
                text = COMMENT.sub("", fh.read())
            names = set(CRATE_PATH.findall(text))
            for group in USE_GROUP.findall(text):
                names.update(re.findall(r"(?:^|[,{\s])([a-z_][a-z0-9_]*)::", group))
                names.update(n.strip() for n in group.split(",") if n.strip() in mods)
            graph[m].update(n for n in names if n in mods and n != m)
    return graph


def cycles(graph):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def path_through(graph, comp):
    start = comp[0]
    prev, todo = {start: None}, [start]
    while todo:
        v = todo.pop(0)
        for w in sorted(graph[v]):
            if w == start:
                p = [v]
                while prev[p[-1]] is not None:
                    p.append(prev[p[-1]])
                return " -> ".join(reversed(p)) + " -> " + start
            if w in comp and w not in prev:
                prev[w] = v
                todo.append(w)
    return " <-> ".join(comp)


def check(root):
    found = 0
    crates = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("target", ".git", "node_modules")]
        src = os.path.join(dirpath, "src")
        if "Cargo.toml" in filenames and os.path.isdir(src):
            crates += 1
            graph = edges(modules(src))
            for comp in cycles(graph):
                found += 1
                rel = os.path.relpath(src, root)
                print(f"{rel}: import cycle between modules {', '.join(comp)}: {path_through(graph, comp)}")
    print(f"checked {crates} crates: {found} module cycle(s)")
    return found


def self_test():
    with tempfile.TemporaryDirectory() as d:
        os.makedirs(os.path.join(d, "c/src/b"))
        open(os.path.join(d, "c/Cargo.toml"), "w").close()
        files = {
            "c/src/lib.rs": "pub mod a; pub mod b; pub mod c;",
            "c/src/a.rs": "use crate::b::X; // crate::c in a comment does not count",
            "c/src/b/mod.rs": "mod inner;",
            "c/src/b/inner.rs": "use crate::{c::Y, other};",
            "c/src/c.rs": "fn f() { crate::a::g() }",
        }
        for name, text in files.items():
            with open(os.path.join(d, name), "w") as fh:
                fh.write(text)
        assert check(d) == 1, "the a -> b -> c -> a cycle was not found"
        with open(os.path.join(d, "c/src/c.rs"), "w") as fh:
            fh.write("fn f() {}")
        assert check(d) == 0, "a cycle was reported where there is none"
    print("self-test passed")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--self-test"]:
        sys.exit(self_test())
    sys.exit(1 if check(sys.argv[1] if len(sys.argv) > 1 else ".") else 0)
