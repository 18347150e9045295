"""Reading sweep-file YAML safely, and saying where in the user's file a schema error is.

Two jobs `sweeper.config` needs and that are easy to get subtly wrong:

* :func:`parse_yaml`: `yaml.safe_load` whose every failure is a :class:`BadYaml` (PyYAML raises
  ValueError, IndexError, RecursionError ... on bad text, not only YAMLError), with the size of a
  document bounded (:data:`MAX_DEPTH`, :data:`MAX_NODES`: YAML aliases can make a few lines stand
  for billions of values);
* :func:`user_loc`: a pydantic error location as the dotted path the user wrote (pydantic adds
  union-member tags and dict-key markers that are no keys of the user's).

No torch, Ray or MLflow here.
"""
from __future__ import annotations

import types
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel


#: the deepest nesting and the most values a sweep file, fragment or --set value may hold: far
#: beyond any real sweep, and a bound on the work of walking and copying it (a few lines of YAML
#: aliases can stand for billions of values)
MAX_DEPTH, MAX_NODES = 32, 100_000


def union_members(ann: Any) -> tuple[Any, ...]:
    """The members of a union annotation other than None (`X | None` -> (X,)); () if not a union."""
    if get_origin(ann) in (Union, types.UnionType):
        return tuple(a for a in get_args(ann) if a is not type(None))
    return ()


def child_annotation(ann: Any, part: Any) -> Any:
    """The annotation one loc part below `ann` (a model's field, a list item, a dict value)."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        field = ann.model_fields.get(str(part))
        return field.annotation if field else Any
    origin, args = get_origin(ann), get_args(ann)
    if origin in (list, set, frozenset) and args:
        return args[0]
    if origin is tuple and args:
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0]
        return args[part] if isinstance(part, int) and 0 <= part < len(args) else Any
    if origin is dict and len(args) == 2:
        return args[1]
    return Any


def user_loc(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[list[str], type[BaseModel] | None]:
    """A pydantic error `loc` as the user's path, and the model whose key the last part is.

    pydantic puts two kinds of parts in a loc that are no keys of the user's: the tag of the union
    member it tried (`objective: Objective | list[Objective]` -> ('objective', 'list[Objective]', 0,
    'metric')) and '[key]' after a dict key that failed. They are recognised by walking the schema
    along the loc (a tag stands exactly where the annotation is a union), never by their spelling:
    a user's key may look like a tag ('Budget')."""
    path: list[str] = []
    owner: type[BaseModel] | None = None
    ann: Any = model
    after_dict_key = False
    for part in loc:
        members = union_members(ann)
        if len(members) > 1:  # this part is pydantic's tag of the union member it tried
            tag = str(part).split("[", 1)[0]
            ann = next((m for m in members if getattr(get_origin(m) or m, "__name__", None) == tag), Any)
            continue
        if members:  # X | None
            ann = members[0]
        if after_dict_key and part == "[key]":
            after_dict_key = False
            continue
        is_model = isinstance(ann, type) and issubclass(ann, BaseModel)
        owner = ann if is_model else None
        after_dict_key = get_origin(ann) is dict
        path.append(str(part))
        ann = child_annotation(ann, part)
    return path, owner


def short_repr(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + " ..."


class BadYaml(Exception):
    """Why a text is not a usable YAML document (the caller adds the file or the --set key)."""


class _NamedKeysLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` whose plain mapping keys spelled as YAML 1.1 booleans (`on`, `off`,
    `yes`, `no`) stay the text written: a sweep file's keys are names (`notify: {on: [end]}`),
    and a boolean key would break everything that sorts or dots keys. Values are read as before."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag == "tag:yaml.org,2002:bool" and not key.style:
                key.tag = "tag:yaml.org,2002:str"
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str) -> Any:
    """`yaml.safe_load`, every failure a `BadYaml`. PyYAML raises more than YAMLError on bad
    input: ValueError for an impossible date (`2024-02-30`), IndexError/ValueError/KeyError for a
    core tag with a bad value (`!!float`, `!!int x`), RecursionError for deep nesting. Keys spelled
    like booleans stay text (`_NamedKeysLoader`)."""
    try:
        doc = yaml.load(text, Loader=_NamedKeysLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise BadYaml(f"not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    except RecursionError:
        raise BadYaml(f"not valid YAML: nested more than Python can read (keep it under {MAX_DEPTH} levels)") from None
    except Exception as exc:  # noqa: BLE001 - any other exception out of PyYAML is about the text too
        raise BadYaml(f"not valid YAML: cannot read a value ({type(exc).__name__}: {exc}); quote values "
                       "meant as text, e.g. '2024-02-30' (unquoted, YAML reads a date) or '!!float'") from None
    check_size(doc)
    return doc


def check_size(doc: Any) -> None:
    """Bound the depth and the number of values (aliases counted every time they are used), so
    nothing later (pydantic, deep copies, flatten) recurses or loops without end on a small file."""
    stack, nodes = [(doc, 1)], 0
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if depth > MAX_DEPTH:
            raise BadYaml(f"nested more than {MAX_DEPTH} levels deep")
        if nodes > MAX_NODES:
            raise BadYaml(f"holds more than {MAX_NODES} values (YAML aliases repeated?)")
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children)
