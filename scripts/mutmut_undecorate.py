"""For mutation runs only: rewrite modules in place so that mutmut 3 mutates their decorated functions.

mutmut 3 leaves every decorated function alone (except a lone @staticmethod or @classmethod).  This
moves each decorator after the definition, which Python runs the same way:

- a method's decorators are applied again after its class, `Cls.name = dec(Cls.__dict__["name"])`
  (a property's `@name.setter`/`.deleter` function is renamed `_name_setter`/`_name_deleter` and attached
  with `Cls.name = Cls.__dict__["name"].setter(...)`);
- a module-level function's right after it, `name = dec(name)`;
- a decorated function nested in a top-level function (a decorator's `wrapper`) keeps its decorator,
  but its body moves to a new top-level function `outer__inner(<outer parameters it uses>, <its own
  parameters>)` that it calls: decorators run at import, before mutmut picks a mutant, so only code run
  at call time can be mutated.  It may use only the outer function's parameters, not its other locals.

Left alone: a lone @staticmethod/@classmethod (mutmut mutates those), @abstractmethod and @overload
(nothing to mutate), class decorators.  Mutant names follow the new layout, e.g.
`store_mongo.xǁMongoStoreǁread_chunk__mutmut_3`, `store_mongo.x_retried__wrapper__mutmut_2`.

Run on a clean checkout, run mutmut, then undo with `git checkout -- <modules>`; never commit the result:

    python scripts/mutmut_undecorate.py store_mongo.py database.py store_sqlite.py sources.py
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

LEFT_ALONE = {"abstractmethod", "overload"}
MUTMUT_HANDLES = {"staticmethod", "classmethod"}


def _decorator_name(node: ast.expr) -> str:
    while isinstance(node, ast.Call):
        node = node.func
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")


def _skip(function: ast.FunctionDef) -> bool:
    names = [_decorator_name(d) for d in function.decorator_list]
    if not names or any(name in LEFT_ALONE for name in names):
        return True
    return len(names) == 1 and names[0] in MUTMUT_HANDLES


def _wrap(decorators: list[str], inner: str) -> str:
    for decorator in reversed(decorators):  # the one nearest the def is applied first
        inner = f"{decorator}({inner})"
    return inner


def _indent_of(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


class Rewrite:
    def __init__(self, source: str):
        self.source = source
        self.lines = source.splitlines(keepends=True)
        self.drop: set[int] = set()  # 0-based line numbers to delete
        self.replace: dict[int, str] = {}
        self.after: dict[int, list[str]] = {}  # 0-based line number -> lines to insert after it

    def segment(self, node: ast.AST) -> str:
        return ast.get_source_segment(self.source, node)

    def remove_decorators(self, function: ast.FunctionDef) -> list[str]:
        decorators = [self.segment(d) for d in function.decorator_list]
        for number in range(function.decorator_list[0].lineno - 1, function.lineno - 1):
            self.drop.add(number)
        return decorators

    def add_after(self, node: ast.AST, text: str) -> None:
        self.after.setdefault(node.end_lineno - 1, []).append(text)

    def method(self, cls: ast.ClassDef, function: ast.FunctionDef) -> None:
        decorators = self.remove_decorators(function)
        name = function.name
        first = function.decorator_list[0]
        if (
            len(decorators) == 1
            and isinstance(first, ast.Attribute)
            and isinstance(first.value, ast.Name)
            and first.attr in ("setter", "getter", "deleter")
        ):
            prop, renamed = first.value.id, f"_{first.value.id}_{first.attr}"
            line = self.lines[function.lineno - 1]
            self.replace[function.lineno - 1] = line.replace(f"def {name}(", f"def {renamed}(", 1)
            self.add_after(
                cls,
                f'{cls.name}.{prop} = {cls.name}.__dict__["{prop}"].{first.attr}({cls.name}.__dict__["{renamed}"])\n',
            )
            return
        raw = f'{cls.name}.__dict__["{name}"]'
        self.add_after(cls, f"{cls.name}.{name} = {_wrap(decorators, raw)}\n")

    def module_function(self, function: ast.FunctionDef) -> None:
        decorators = self.remove_decorators(function)
        self.add_after(function, f"{function.name} = {_wrap(decorators, function.name)}\n")

    def nested(self, outer: ast.FunctionDef, inner: ast.FunctionDef) -> None:
        outer_params = [a.arg for a in (*outer.args.posonlyargs, *outer.args.args, *outer.args.kwonlyargs)]
        outer_params += [a.arg for a in (outer.args.vararg, outer.args.kwarg) if a]
        outer_locals = {n.id for n in ast.walk(outer) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        outer_locals |= {n.name for n in ast.walk(outer) if isinstance(n, ast.FunctionDef) and n is not outer}
        used = {
            n.id
            for statement in inner.body
            for n in ast.walk(statement)
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
        }
        inner_params = {a.arg for a in ast.walk(inner.args) if isinstance(a, ast.arg)}
        inner_locals = {n.id for n in ast.walk(inner) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        captured_locals = (used & outer_locals) - inner_params - inner_locals - set(outer_params)
        if captured_locals or inner.args.posonlyargs or isinstance(inner, ast.AsyncFunctionDef):
            raise SystemExit(
                f"{outer.name}.{inner.name}: cannot move (uses {sorted(captured_locals)} of "
                f"{outer.name}, or is async / has positional-only parameters)"
            )
        captured = [p for p in outer_params if p in used and p not in inner_params]
        generator = any(isinstance(n, (ast.Yield, ast.YieldFrom)) for n in ast.walk(inner))
        hoisted = f"{outer.name}__{inner.name}"
        call_args = [a.arg for a in inner.args.args]
        call_args += [f"*{inner.args.vararg.arg}"] if inner.args.vararg else []
        call_args += [f"{a.arg}={a.arg}" for a in inner.args.kwonlyargs]
        call_args += [f"**{inner.args.kwarg.arg}"] if inner.args.kwarg else []
        call = f"{hoisted}({', '.join(captured + call_args)})"
        body_first, body_last = inner.body[0].lineno - 1, inner.end_lineno - 1
        body_indent = _indent_of(self.lines[body_first])
        body = [
            line[len(body_indent) :] if line.startswith(body_indent) else line
            for line in self.lines[body_first : body_last + 1]
        ]
        self.replace[body_first] = f"{body_indent}return {'(yield from ' + call + ')' if generator else call}\n"
        self.drop.update(range(body_first + 1, body_last + 1))
        signature = ", ".join(captured + [ast.unparse(inner.args)]) if captured else ast.unparse(inner.args)
        text = f"\n\ndef {hoisted}({signature}):\n" + "".join("    " + line if line.strip() else line for line in body)
        self.add_after(outer, text)

    def render(self) -> str:
        out = []
        for number, line in enumerate(self.lines):
            if number not in self.drop:
                out.append(self.replace.get(number, line))
            out.extend(self.after.get(number, []))
        return "".join(out)


def undecorate(source: str) -> str:
    tree = ast.parse(source)
    rewrite = Rewrite(source)
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            methods = [m for m in node.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))]
            for method in methods:
                if not _skip(method):
                    rewrite.method(node, method)
            if any(not _skip(m) for m in methods):
                rewrite.after[node.end_lineno - 1].insert(0, "\n\n")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if not _skip(node):
                rewrite.module_function(node)
            for inner in node.body:  # a decorator's wrapper, one level down
                if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef)) and inner.decorator_list:
                    rewrite.nested(node, inner)
    result = rewrite.render()
    ast.parse(result)  # still Python
    return result


def main(paths: list[str]) -> None:
    if not paths:
        raise SystemExit(__doc__)
    for path in map(Path, paths):
        source = path.read_text()
        result = undecorate(source)
        if result != source:
            path.write_text(result)
            print(f"rewrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
