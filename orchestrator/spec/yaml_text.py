"""The one safe way caviar reads YAML the user wrote (a spec, a ``--set`` value).

``yaml.safe_load`` never constructs Python objects, but it does follow aliases: an anchor
nested in an anchor nested in an anchor ("billion laughs") is a few hundred bytes of text
that stands for billions of values. PyYAML itself builds it cheaply (every ``*name`` is the
same Python object), but everything after it that walks the data (the depth check, pydantic's
validation, JSON for MLflow) walks every expansion, for minutes and without bound on memory.

So :func:`load_yaml` measures the composed node graph before constructing anything: each
node once (memoized by identity, so the walk is linear in the text), its depth and the number
of values it expands to. A document nested too deep, containing itself, or expanding to more
than :data:`MAX_EXPANDED_VALUES` values is refused with :class:`YamlShapeError`, a
``yaml.YAMLError``, so every caller that already handles bad YAML handles it too.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

# A spec is a few levels deep (section, parameter, field, list); anything far deeper is not a
# spec, and refusing it early keeps every later walk of the data clear of Python's recursion limit.
MAX_SPEC_DEPTH = 32
# A spec holds tens to a few hundred values (keys included); 100k leaves any honest spec, even
# a long grid written through anchors, far inside, and bounds what a later walk can cost.
MAX_EXPANDED_VALUES = 100_000

TOO_DEEP = (
    f"nests deeper than {MAX_SPEC_DEPTH} levels; a spec is a few levels deep "
    "(section, parameter, field): check for unbalanced brackets, a pasted data structure or "
    "a YAML alias (*name) used inside its own anchor (&name)"
)
TOO_MANY_ALIASED = (
    f"uses YAML aliases (*name) that expand to more than {MAX_EXPANDED_VALUES} values; a spec "
    "has a few hundred: write the values out instead of anchors (&name) built from aliases of "
    "other anchors"
)
TOO_MANY = (
    f"has more than {MAX_EXPANDED_VALUES} values; a spec has a few hundred: "
    "is this a data file? Name data files in the spec's data section"
)


class YamlShapeError(yaml.YAMLError):
    """Valid YAML whose shape is not a spec's: too deep, self-containing or too large."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem  # what SpecError lists; read like yaml's own MarkedYAMLError


def load_yaml(text: str) -> Any:
    """``yaml.safe_load(text)``, refusing (with :class:`YamlShapeError`) a document deeper
    than :data:`MAX_SPEC_DEPTH`, containing itself, or expanding to more than
    :data:`MAX_EXPANDED_VALUES` values; other bad YAML raises yaml's own errors."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()  # the graph: linear in the text, aliases shared
        except RecursionError:  # the composer recurses once per nesting level
            raise YamlShapeError(TOO_DEEP) from None
        if node is None:
            return None
        _check_shape(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_shape(root: Node) -> None:
    """Depth and expanded size of every node, bottom up, each node visited once.

    Invariants: ``size[id(n)]`` and ``depth[id(n)]`` are set once all of ``n``'s children
    have theirs; ``open_`` holds the nodes whose children are still being measured, so
    meeting one of them again means the node contains itself (infinitely deep). The walk
    uses an explicit stack: no recursion, whatever the nesting.
    """
    size: dict[int, int] = {}  # values the node expands to, itself included
    depth: dict[int, int] = {}  # collections around its deepest value (a scalar: 0)
    open_: set[int] = set()
    aliased = False  # a node reached twice: the document uses aliases
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        kids = _children(node)
        if children_done:
            open_.discard(key)
            size[key] = 1 + sum(size[id(kid)] for kid in kids)
            depth[key] = 1 + max(depth[id(kid)] for kid in kids) if kids else 0
            if depth[key] > MAX_SPEC_DEPTH:
                raise YamlShapeError(TOO_DEEP)
            if size[key] > MAX_EXPANDED_VALUES:
                raise YamlShapeError(TOO_MANY_ALIASED if aliased else TOO_MANY)
            continue
        if key in size:
            aliased = True
            continue
        if key in open_:  # an alias inside its own anchor
            raise YamlShapeError(TOO_DEEP)
        open_.add(key)
        stack.append((node, True))
        stack.extend((kid, False) for kid in kids)
