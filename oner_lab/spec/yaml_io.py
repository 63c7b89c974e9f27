"""Reading spec YAML safely, with the two PyYAML surprises removed.

PyYAML's SafeLoader (YAML 1.1) silently keeps the last of two equal keys and reads `3e-4`
(no dot) as a string. A spec is hand-edited, so a repeated key is an error here, and
exponent floats are floats, as in YAML 1.2 and every other tool the user knows.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from oner_lab.spec.errors import SpecError

_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class SpecLoader(yaml.SafeLoader):
    """SafeLoader that reads 1e-3 as a float (YAML 1.2); repeated keys are caught by `_check_unique_keys`."""


SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
SpecLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def parse_yaml(text: str) -> Any:
    """Parse YAML text with SpecLoader; raises yaml.YAMLError."""
    return yaml.load(text, Loader=SpecLoader)  # noqa: S506 -- SpecLoader is a SafeLoader


class RepeatedKey(Exception):
    def __init__(self, key: str, line: int, first_line: int) -> None:
        super().__init__(key)
        self.key, self.line, self.first_line = key, line, first_line


def _check_unique_keys(node: yaml.Node, path: tuple[str, ...] = (), seen_nodes: set[int] | None = None) -> None:
    """Walk the composed document; a mapping that names a key twice raises RepeatedKey with its dotted path."""
    seen_nodes = set() if seen_nodes is None else seen_nodes
    if id(node) in seen_nodes:  # an alias (&anchor / *alias) already checked, possibly recursive
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                raise RepeatedKey(".".join((*path, key)), key_node.start_mark.line + 1, seen[key].start_mark.line + 1)
            seen[key] = key_node
            _check_unique_keys(value_node, (*path, key), seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_unique_keys(item, (*path, str(index)), seen_nodes)


def read_yaml(path: Path) -> Any:
    """Read and parse one spec file; unreadable, malformed or repeated-key files raise SpecError."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(
            path, "(file)", f"cannot be read ({error.__class__.__name__}: {error})", "a readable UTF-8 YAML file"
        ) from None
    loader = SpecLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_unique_keys(node)
        return loader.construct_document(node)
    except RepeatedKey as repeated:
        raise SpecError(
            path,
            repeated.key,
            f"is written twice (lines {repeated.first_line} and {repeated.line}); YAML would silently keep the last",
            "each key once per mapping",
            line=repeated.line,
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error)
        context = getattr(error, "context", None)
        context_mark = getattr(error, "context_mark", None)
        if context and context_mark is not None and (mark is None or context_mark.line != mark.line):
            context += f" (which starts on line {context_mark.line + 1})"
        raise SpecError(
            path,
            "",
            f"malformed YAML: {f'{context}, ' if context else ''}{problem}",
            "well-formed YAML (check indentation, quotes, colons and brackets)",
            line=None if mark is None else mark.line + 1,
        ) from None
    finally:
        loader.dispose()
