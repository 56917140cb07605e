"""The package's structure drawn from its imports (issue 20): import circles, imports that run back
up a layer, and modules over 400 lines. ``python bench/layers.py`` prints it; ``bench/run.py --only
layers`` records it. Every import counts: module level, inside functions, and under TYPE_CHECKING.

The layers are docs/ARCHITECTURE.md's, lowest first; a subpackage may import its own modules and
those of lower layers only. The package face (``pytest_dspex/__init__.py``, lazy re-exports) is no layer.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "pytest_dspex"
#: layer of each top-level module or subpackage of the package (docs/ARCHITECTURE.md)
LAYERS = {
    "errors": 0, "_support": 1, "observe": 2, "lm": 3, "testing": 3, "programs": 4, "evaluation": 5,
    "golden": 6, "optimize": 7, "reports": 8, "plugin": 9, "cli": 10, "__main__": 11,
}  # fmt: skip
LONG = 400


def modules(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        name = ".".join(path.relative_to(root).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (a name imported from a package counts as that
    package's submodule when there is one)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in mods else base)
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            edges[mod].update(t for t in targets if t in mods and t != mod)
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(set(edges) | {w for ws in edges.values() for w in ws}):
        if v not in index:
            visit(v)
    return found


def part(mod: str) -> str | None:
    """The layer key of a module: its subpackage or top-level module (None: the package face)."""
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else None


def measure(root: Path = ROOT) -> dict[str, Any]:
    mods = modules(root)
    edges = imports(mods)
    by_part: dict[str, set[str]] = defaultdict(set)
    for a, bs in edges.items():
        for b in bs:
            pa, pb = part(a), part(b)
            if pa and pb and pa != pb:
                by_part[pa].add(pb)
    up = sorted(
        (a, b)
        for a, bs in edges.items()
        for b in bs
        if part(a) and part(b) and part(a) != part(b) and LAYERS.get(part(b) or "", -1) >= LAYERS.get(part(a) or "", -1)
    )
    unplaced = sorted({p for m in mods if (p := part(m)) and p not in LAYERS})
    long = sorted((n, m) for m, p in mods.items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > LONG)
    return {
        "modules": len(mods),
        "imports": sum(len(v) for v in edges.values()),
        "module_circles": circles(edges),
        "layer_circles": circles(by_part),
        "up": up,
        "unplaced": unplaced,
        "long": long[::-1],
    }


def lines(m: dict[str, Any]) -> list[str]:
    out = [
        f"{m['modules']} modules, {m['imports']} imports between them (module level, in functions, under TYPE_CHECKING)",
        "",
        "| what | count | where |",
        "|---|---|---|",
        f"| import circles between modules | {len(m['module_circles'])} | {'; '.join(' ↔ '.join(c) for c in m['module_circles']) or '-'} |",
        f"| import circles between layers | {len(m['layer_circles'])} | {'; '.join(' ↔ '.join(c) for c in m['layer_circles']) or '-'} |",
        f"| imports that run back up (or across) a layer | {len(m['up'])} | {'; '.join(f'{a} → {b}' for a, b in m['up']) or '-'} |",
        f"| modules over {LONG} lines | {len(m['long'])} | {', '.join(f'{mod} ({n})' for n, mod in m['long']) or '-'} |",
    ]
    if m["unplaced"]:
        out.append(f"\nnot in any layer of docs/ARCHITECTURE.md (add them to LAYERS): {', '.join(m['unplaced'])}")
    return out


def section(ctx: Any) -> list[str]:
    """bench/run.py section: the structure drawn from the imports, each target checked."""
    m = measure()
    circles_n = len(m["module_circles"]) + len(m["layer_circles"])
    ctx.target("import circles in the package (modules and layers)", str(circles_n), "0", circles_n == 0)
    ctx.target("imports that run back up a layer", str(len(m["up"])), "0", not m["up"])
    return lines(m)


if __name__ == "__main__":
    print("\n".join(lines(measure(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT))))
