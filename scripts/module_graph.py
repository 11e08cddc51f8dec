#!/usr/bin/env python3
"""Prints which top-level modules of src/ import which, and fails on a circle.

Usage: scripts/module_graph.py [SRC_DIR]

A module is a file `src/NAME.rs` or a folder `src/NAME/`; an edge A -> B is any path
`crate::B…` written in A (a `use`, braces included, or a path in an expression), unit
tests left out (a `#[cfg(test)] mod` and files named `tests.rs`: tests may use what lies
above the code they test, the in-memory adapters for one). The
graph is printed in layer order: a module is listed after every module it imports.
Exit status 1, with the modules of each circle, when the imports are not a DAG.
"""
import re
import sys
from pathlib import Path

PATH = re.compile(r"\bcrate::(\{|[a-z_][a-z0-9_]*)")
COMMENT = re.compile(r"//[^\n]*")


def braced_heads(text, start):
    """First names of each item of the `{…}` group opening at text[start]."""
    depth, item, heads = 0, "", []
    for ch in text[start:]:
        if ch == "{":
            depth += 1
            if depth == 1:
                continue
        elif ch == "}":
            depth -= 1
            if depth == 0:
                break
        if depth == 1 and ch == ",":
            heads.append(item)
            item = ""
        else:
            item += ch
    heads.append(item)
    names = []
    for head in heads:
        match = re.match(r"\s*([a-z_][a-z0-9_]*)", head)
        if match and match.group(1) != "self":
            names.append(match.group(1))
    return names


TEST_MODULE = re.compile(r"^#\[cfg\(test\)\]\s*\n\s*mod ", re.M)


def imports_of(text):
    """Our modules named in `text`, leaving out its unit tests (they may sit above it)."""
    text = COMMENT.sub("", text)
    test_module = TEST_MODULE.search(text)
    if test_module:
        text = text[: test_module.start()]
    found = set()
    for match in PATH.finditer(text):
        if match.group(1) == "{":
            found.update(braced_heads(text, match.start(1)))
        else:
            found.add(match.group(1))
    return found


def module_of(src, path):
    first = path.relative_to(src).parts[0]
    return first[:-3] if first.endswith(".rs") else first


def graph(src):
    edges = {}
    for path in sorted(src.rglob("*.rs")):
        module = module_of(src, path)
        if module in ("lib", "main", "bin") or path.name == "tests.rs":
            continue
        targets = edges.setdefault(module, set())
        targets.update(m for m in imports_of(path.read_text()) if m != module)
    for targets in edges.values():
        targets.intersection_update(edges)
    return edges


def circles(edges):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10000)
    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def layers(edges):
    """Each module's layer: 0 imports nothing of ours, n imports only layers below n."""
    layer = {}
    remaining = dict(edges)
    level = 0
    while remaining:
        ready = [m for m, ts in remaining.items() if all(t in layer for t in ts)]
        if not ready:
            return layer, sorted(remaining)
        for module in ready:
            layer[module] = level
            del remaining[module]
        level += 1
    return layer, []


def main():
    src = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent.parent / "src")
    edges = graph(src)
    layer, stuck = layers(edges)
    for module in sorted(layer, key=lambda m: (-layer[m], m)):
        targets = ", ".join(sorted(edges[module])) or "-"
        print(f"L{layer[module]} {module:<10} -> {targets}")
    for module in stuck:
        print(f"?? {module:<10} -> {', '.join(sorted(edges[module]))}")
    found = circles(edges)
    for circle in found:
        print(file=sys.stderr)
        print(f"circle: {' <-> '.join(circle)}", file=sys.stderr)
    if found:
        print(f"{len(found)} import circle(s) between top-level modules of {src}", file=sys.stderr)
        return 1
    print(f"no import circle between the {len(edges)} top-level modules of {src}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
