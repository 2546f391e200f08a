"""comfy_bridge/errors.py's opening tree lists every error class, under its parent, with its status."""

from __future__ import annotations

import re

from comfy_bridge import errors


def _tree() -> dict[str, tuple[str | None, int]]:
    """`{class: (parent, status)}` read from the docstring's tree drawing."""
    found: dict[str, tuple[str | None, int]] = {}
    stack: list[str] = []
    for line in (errors.__doc__ or "").splitlines():
        m = re.match(r"^\s{4}(?P<indent>[│├└─ ]*)(?P<name>[A-Z]\w+)\s+\(?(?P<status>\d{3})", line)
        if not m:
            continue
        depth = len(m["indent"]) // 4
        del stack[depth:]
        found[m["name"]] = (stack[-1] if stack else None, int(m["status"]))
        stack.append(m["name"])
    return found


def test_the_tree_lists_every_error_class_under_its_parent_with_its_status() -> None:
    classes = {name: cls for name, cls in vars(errors).items()
               if isinstance(cls, type) and issubclass(cls, errors.BridgeError)}
    tree = _tree()
    assert set(tree) == set(classes), f"not in the tree: {sorted(set(classes) - set(tree))}"
    for name, cls in classes.items():
        parent, status = tree[name]
        base = cls.__bases__[0].__name__ if cls is not errors.BridgeError else None
        assert (parent, status) == (base, cls.status), name
