"""The config's YAML, read within limits: no document may take minutes or gigabytes.

`yaml.safe_load` alone expands aliases without bound (a "billion laughs" document of a
few hundred bytes takes minutes and gigabytes), keeps the second of two equal keys
without a word, and builds whatever the file nests. Here a document is read in three
passes, each linear in the file's size:

1. the parser's events (libyaml): the number of values and the nesting depth, stopped
   at the first one over its limit, before anything is built;
   Explicit tags are checked there too: only the standard ones (`!!int`, `!!str`...),
   on a value they can build (`!!int abc`, `!!bool maybe` would fail construction);
2. the node graph (compose), walked once: each node's size and depth once its aliases
   are expanded are memoized, as an alias is the very node object it names (the walk
   stays linear while the expansion is exponential); duplicate keys, keys that are
   lists or mappings, recursive aliases and numbers too long to convert quickly are
   refused in the same walk;
3. construction, of a graph now known to be small and shallow.

Errors name the key path, as the rest of the config's errors do.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_BYTES = 1 << 20
# Building a document costs about 10 microseconds a value: 50,000 take half a second.
MAX_VALUES = 50_000
MAX_DEPTH = 64
# Python converts a long number in quadratic time (a sexagesimal 1:2:3:... of a
# megabyte takes minutes); no setting of the config needs more than a few digits.
MAX_NUMBER_CHARS = 100

# libyaml: several times faster than the pure-Python parser, the same resolver and
# constructor.
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_NODE_EVENTS = (yaml.ScalarEvent, yaml.AliasEvent, yaml.SequenceStartEvent,
                yaml.MappingStartEvent)
_START_EVENTS = (yaml.SequenceStartEvent, yaml.MappingStartEvent)
_END_EVENTS = (yaml.SequenceEndEvent, yaml.MappingEndEvent)
_NUMBER_TAGS = frozenset({"tag:yaml.org,2002:int", "tag:yaml.org,2002:float"})
_STANDARD = "tag:yaml.org,2002:"
# The tags SafeConstructor builds, by the kind of node they may tag.
_TAGS: dict[type[yaml.Event], frozenset[str]] = {
    yaml.ScalarEvent: frozenset(_STANDARD + t for t in (
        "null", "bool", "int", "float", "binary", "timestamp", "str")),
    yaml.SequenceStartEvent: frozenset(_STANDARD + t for t in ("seq", "omap", "pairs")),
    yaml.MappingStartEvent: frozenset(_STANDARD + t for t in ("map", "set")),
}
_KIND = {yaml.ScalarEvent: "scalar", yaml.SequenceStartEvent: "list",
         yaml.MappingStartEvent: "mapping"}


class YamlError(ValueError):
    """Why the document was refused, one line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def load(text: str) -> Any:
    """The document in `text`, built only once it is known to be small."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        raise YamlError([f"the config is {size} bytes, more than the {MAX_BYTES} allowed"])
    try:
        _check_events(text)
        loader = _Loader(text)
        try:
            root = loader.get_single_node()
            if root is None:
                return None
            _check_graph(root)
            return loader.construct_document(root)
        finally:
            loader.dispose()
    except YamlError:
        raise
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(error, "problem", None) or "not valid YAML"
        raise YamlError([f"{where}{problem}"]) from None
    except Exception as error:  # a construction the checks above missed: never a traceback
        raise YamlError([f"the config cannot be read as YAML ({type(error).__name__})"]
                        ) from None


# --------------------------------------------------------------------------- paths


def _key_text(node: Node | None) -> str:
    if isinstance(node, ScalarNode):
        text = node.value
        return text if len(text) <= 40 else text[:37] + "..."
    return "?"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _line(node: Node | yaml.Event) -> int:
    return node.start_mark.line + 1


# --------------------------------------------------------------------------- events


def _check_events(text: str) -> None:
    """Refuses a document with too many values or too deep, or a tag it cannot build,
    before composing it."""
    count = depth = 0
    for index, event in enumerate(yaml.parse(text, Loader=_Loader)):
        if isinstance(event, _NODE_EVENTS):
            tag = getattr(event, "tag", None)
            if tag is not None and tag != "!":  # "!": a plain string, as YAML says
                problem = _tag_problem(event, tag)
                if problem is not None:
                    path = _event_path(text, index)
                    raise YamlError([f"{path or 'the config'}: {problem} "
                                     f"(line {_line(event)})"])
            count += 1
            if count > MAX_VALUES:
                path = _event_path(text, index)
                raise YamlError([f"{path or 'the config'}: more than {MAX_VALUES} values "
                                 f"(line {_line(event)})"])
            if isinstance(event, _START_EVENTS):
                depth += 1
                if depth > MAX_DEPTH:
                    path = _event_path(text, index)
                    raise YamlError([f"{path or 'the config'}: nested more than {MAX_DEPTH} "
                                     f"levels deep (line {_line(event)})"])
        elif isinstance(event, _END_EVENTS):
            depth -= 1


def _tag_problem(event: yaml.Event, tag: str) -> str | None:
    """Why a value with an explicit tag cannot be built, or None."""
    if not any(tag in tags for tags in _TAGS.values()):
        return f"unknown YAML tag {_short(tag)}"
    kind = type(event)
    if tag not in _TAGS[kind]:
        return f"the YAML tag {_short(tag)} cannot tag a {_KIND[kind]}"
    if kind is not yaml.ScalarEvent:
        return None
    value = event.value
    if tag in _NUMBER_TAGS and len(value) > MAX_NUMBER_CHARS:
        return None  # refused as too long once composed
    try:
        SafeConstructor().construct_object(ScalarNode(tag, value))
    except Exception:
        return f"{_short(repr(value))} is not a valid {_short(tag)}"
    return None


def _short(text: str) -> str:
    text = text.replace(_STANDARD, "!!")
    return text if len(text) <= 40 else text[:37] + "..."


def _event_path(text: str, stop: int) -> str:
    """The key path of the event numbered `stop` (a second pass, on an error only)."""
    # One frame per open collection: [is_mapping, path, next index or key, expecting a key]
    frames: list[list[Any]] = []
    path = ""
    for index, event in enumerate(yaml.parse(text, Loader=_Loader)):
        if isinstance(event, _END_EVENTS):
            frames.pop()
            continue
        if not isinstance(event, _NODE_EVENTS):
            continue
        if not frames:
            path = ""
        elif frames[-1][0]:
            frame = frames[-1]
            if frame[3]:  # a key: errors in it belong to its mapping
                path = frame[1]
                frame[2] = event.value if isinstance(event, yaml.ScalarEvent) else "?"
                if len(frame[2]) > 40:
                    frame[2] = frame[2][:37] + "..."
            else:
                path = _join(frame[1], frame[2])
            frame[3] = not frame[3]
        else:
            path = f"{frames[-1][1]}[{frames[-1][2]}]"
            frames[-1][2] += 1
        if index == stop:
            return path
        if isinstance(event, yaml.MappingStartEvent):
            frames.append([True, path, "?", True])
        elif isinstance(event, yaml.SequenceStartEvent):
            frames.append([False, path, 0, False])
    return path


# --------------------------------------------------------------------------- node graph


class _Refused(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _children(node: Node, path: str) -> Iterator[tuple[Node, str]]:
    if isinstance(node, MappingNode):
        for key, value in node.value:
            yield key, path
            yield value, _join(path, _key_text(key))
    elif isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            yield item, f"{path}[{i}]"


def _check_graph(root: Node) -> None:
    """One walk over the node graph, each node entered once; raises YamlError."""
    errors: list[str] = []
    # id(node) -> (values, levels of nesting) once expanded; a scalar is 0 levels.
    known: dict[int, tuple[int, int]] = {}
    entered: set[int] = set()   # on the current path: seeing one again is a cycle
    keys = SafeConstructor()
    # Frames of the nodes being walked: node, path, children left, [size, deepest child].
    stack: list[tuple[Node, str, Iterator[tuple[Node, str]], list[int]]] = []

    def enter(node: Node, path: str) -> tuple[int, int] | None:
        """The node's expanded size and depth if known now; otherwise it is pushed."""
        found = known.get(id(node))
        if found is not None:
            return found
        if id(node) in entered:
            raise _Refused(f"{path or 'the config'}: refers to itself (a recursive YAML alias, "
                           f"line {_line(node)})")
        if isinstance(node, ScalarNode):
            if node.tag in _NUMBER_TAGS and len(node.value) > MAX_NUMBER_CHARS:
                errors.append(f"{path or 'the config'}: a number of {len(node.value)} "
                              f"characters, more than the {MAX_NUMBER_CHARS} allowed "
                              f"(line {_line(node)})")
            known[id(node)] = (1, 0)
            return known[id(node)]
        if isinstance(node, MappingNode):
            errors.extend(_keys(node, path, keys))
        entered.add(id(node))
        stack.append((node, path, _children(node, path), [1, 0]))
        return None

    try:
        enter(root, "")
        while stack:
            node, path, children, total = stack[-1]
            for child, child_path in children:
                found = enter(child, child_path)
                if found is None:
                    break
                total[0] += found[0]
                total[1] = max(total[1], found[1])
            else:
                stack.pop()
                entered.discard(id(node))
                size, depth = total[0], total[1] + 1
                known[id(node)] = (size, depth)
                # Children finish first: the first node over a limit is the deepest one,
                # where the aliases expand.
                if size > MAX_VALUES:
                    raise _Refused(f"{path or 'the config'}: expands to more than "
                                   f"{MAX_VALUES} values (YAML aliases/anchors?)")
                if depth > MAX_DEPTH:
                    raise _Refused(f"{path or 'the config'}: nested more than {MAX_DEPTH} "
                                   f"levels deep once YAML aliases are expanded "
                                   f"(line {_line(node)})")
                if node.tag in _BUILT_WITH_CHECKS:
                    errors.extend(_built(node, path))
                if stack:
                    stack[-1][3][0] += size
                    stack[-1][3][1] = max(stack[-1][3][1], depth)
    except _Refused as refused:
        errors.append(refused.message)
    if errors:
        raise YamlError(errors)


# Collections whose construction checks their content (`!!omap [a]` is no ordered map).
_BUILT_WITH_CHECKS = frozenset(_STANDARD + t for t in ("omap", "pairs", "set"))


def _built(node: Node, path: str) -> list[str]:
    """Why a node of _BUILT_WITH_CHECKS cannot be built, with its key path, or nothing."""
    try:
        SafeConstructor().construct_object(node, deep=True)
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or "not valid"
        return [f"{path or 'the config'}: {problem} (line {_line(node)})"]
    except Exception:
        return [f"{path or 'the config'}: cannot be built (line {_line(node)})"]
    return []


def _keys(node: MappingNode, path: str, constructor: SafeConstructor) -> list[str]:
    """What is wrong with a mapping's keys: duplicates, lists or mappings as keys."""
    errors = [f"{_join(path, '?')}: a list or mapping as a key (line {_line(key)})"
              for key, _ in node.value if not isinstance(key, ScalarNode)]
    return errors + _duplicate_keys(node, path, constructor)


def _duplicate_keys(node: MappingNode, path: str, constructor: SafeConstructor) -> list[str]:
    """Keys of one mapping that build equal values (`1` and `0x1`, `on` and `true`...).

    Keys brought in by a merge (`<<: *defaults`) are not the mapping's own: overriding
    one is what a merge is for.
    """
    seen: dict[Any, Node] = {}
    errors = []
    for key, _ in node.value:
        if not isinstance(key, ScalarNode):
            continue  # a sequence or mapping as a key fails construction, with its line
        if key.tag in _NUMBER_TAGS and len(key.value) > MAX_NUMBER_CHARS:
            continue  # refused on its own when the walk reaches it
        try:
            value = constructor.construct_object(key)
            hash(value)
        except (yaml.YAMLError, TypeError, ValueError):
            value = (key.tag, key.value)
        first = seen.get(value)
        if first is None:
            seen[value] = key
        else:
            errors.append(f"{_join(path, _key_text(key))}: duplicate key (line {_line(key)}; "
                          f"first at line {_line(first)})")
    return errors
