"""The package layout stays one-way (docs/design.md, "Where things live"): no import cycles
between modules or between rooms, lower rooms never import higher ones, and private Keras
internals are used in rskeras/keras_compat.py only. Static (ast), no imports."""

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "rskeras"

# Each room may import only the rooms listed before it (and itself).
LAYERS = [
    {"rskeras.errors"},
    {"rskeras.config", "rskeras.utils", "rskeras.dataset", "rskeras.keras_compat", "rskeras.weights"},
    {"rskeras.models"},
    {"rskeras.train"},
    {"rskeras.run"},
    {"rskeras.export", "rskeras.saving"},
    {"rskeras.lightning_cli", "rskeras.testing"},
    {"rskeras.commands", "rskeras.__main__"},
]


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str, path: pathlib.Path, known: dict) -> set[str]:
    """rskeras modules imported anywhere in the file (function-local and TYPE_CHECKING too)."""

    def resolve(dotted: str) -> str | None:
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            if target.startswith("rskeras"):
                resolved = resolve(target)
                if resolved:
                    out.add(resolved)
    out.discard(name)
    return out


def graph(depth: int | None = None) -> dict[str, set[str]]:
    known = modules()
    out: dict[str, set[str]] = {}

    def room(n: str) -> str:
        return ".".join(n.split(".")[:depth]) if depth else n

    for name, path in known.items():
        deps = {room(d) for d in imports(name, path, known)} - {room(name)}
        out.setdefault(room(name), set()).update(deps)
    return out


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(g):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_between_modules_or_rooms():
    assert cycles(graph()) == []
    assert cycles(graph(depth=2)) == []


def test_rooms_import_downward_only():
    def layer_of(name: str) -> int:
        for i, rooms in enumerate(LAYERS):
            if any(name == r or name.startswith(r + ".") for r in rooms):
                return i
        raise AssertionError(f"{name} is in no layer of tests/test_layout.py")

    upward = sorted(
        f"{a} -> {b}" for a, deps in graph().items() if a != "rskeras" for b in deps if b != "rskeras" and layer_of(b) > layer_of(a)
    )
    assert upward == []


def test_private_keras_internals_only_in_keras_compat():
    pattern = re.compile(
        r"keras\.src|_flatten_layers|\b_trainable_variables\b|_maybe_symbolic_build|_get_metrics_result_or_logs|"
        r"_in_multi_worker_mode|_backend_update_step|_distributed_tf_update_step|_collect_learning_rate|_get_variable_index|_var_key\b|_clip_gradients|tf\.__internal__"
    )
    offenders = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in PACKAGE.rglob("*.py")
        if p.name != "keras_compat.py"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []
