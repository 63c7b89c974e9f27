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
    """SafeLoader that rejects repeated mapping keys and reads 1e-3 as a float."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"found the key {key!r} twice (first on line {seen[key].start_mark.line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
SpecLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def parse_yaml(text: str) -> Any:
    """Parse YAML text with SpecLoader; raises yaml.YAMLError."""
    return yaml.load(text, Loader=SpecLoader)  # noqa: S506 -- SpecLoader is a SafeLoader


def read_yaml(path: Path) -> Any:
    """Read and parse one spec file; unreadable or malformed files raise SpecError with the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(
            path, "(file)", f"cannot be read ({error.__class__.__name__}: {error})", "a readable UTF-8 YAML file"
        ) from None
    try:
        return parse_yaml(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error)
        context = getattr(error, "context", None)
        raise SpecError(
            path,
            "(YAML syntax)",
            f"malformed YAML: {f'{context}, ' if context else ''}{problem}",
            "well-formed YAML (check indentation, quotes, colons and brackets)",
            line=None if mark is None else mark.line + 1,
        ) from None
