"""Reading fastfog's YAML files (config and ACL) strictly, fast, and with line numbers.

PyYAML is the parser; what it lacks for an egress proxy's files is added here:

- a key given twice in one mapping, at any depth, is an error naming the file,
  the line and the key (YAML parsers let the last one win: an ``action:
  enforce`` followed by ``action: open`` would switch enforcement off without
  a word);
- every mapping remembers the line of each of its keys (``Located.line``), so
  that a loader's own errors (an unknown key, a bad value) can name the line;
- libyaml (``CSafeLoader``) does the scanning and parsing when PyYAML was
  built with it, which is several times faster than the pure-Python parser on
  a large ACL; the checks above ride on the constructor, which both share.
"""

import yaml

try:
    from yaml import CSafeLoader as _Base
except ImportError:  # PyYAML built without libyaml: the same checks, slower
    from yaml import SafeLoader as _Base
MERGE_TAG = "tag:yaml.org,2002:merge"


class Located(dict):
    """A mapping from a YAML file that knows where (line, column; 1-based) each of its keys is."""

    __slots__ = ("lines", "start")

    def line(self, key):
        """The line of ``key``, or of the mapping itself when the key is not there."""
        return self.lines.get(key, self.start)[0]

    def where(self, key):
        """``line N, column M`` of ``key`` (of the mapping itself when the key is not there)."""
        line, column = self.lines.get(key, self.start)
        return f"line {line}, column {column}"


class DuplicateKey(yaml.YAMLError):
    def __init__(self, key, where, first_line):
        super().__init__(f"{where}: {key}: duplicate key (first given on line {first_line})")


class StrictLoader(_Base):
    """SafeLoader's types, with duplicate keys refused and key lines kept (see the module doc)."""


def _construct_mapping(loader, node):
    mapping = Located()
    mapping.lines = {}
    mapping.start = (node.start_mark.line + 1, node.start_mark.column + 1)
    yield mapping
    lines = mapping.lines
    for key_node, _ in node.value:  # explicit keys only: merged ones (<<) may be overridden
        if key_node.tag == MERGE_TAG:
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = lines.get(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "found an unhashable key", key_node.start_mark) from None
        mark = key_node.start_mark
        if first is not None:
            raise DuplicateKey(key, f"line {mark.line + 1}, column {mark.column + 1}", first[0])
        lines[key] = (mark.line + 1, mark.column + 1)
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        mapping[loader.construct_object(key_node, deep=True)] = loader.construct_object(value_node, deep=True)


StrictLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


def parse_yaml(text_or_file):
    """The document, strictly (see the module doc); yaml.YAMLError when it cannot be."""
    return yaml.load(text_or_file, Loader=StrictLoader)


def read_yaml(path, error):
    """The document in ``path``; raises ``error("<path>: <reason>")`` when it cannot be read or parsed."""
    try:
        with open(path, "rb") as file:
            data = file.read()  # libyaml reading a file object holds the GIL far longer (see reload.py)
        return parse_yaml(data)
    except OSError as err:
        raise error(f"{path}: {err.strerror}") from None
    except DuplicateKey as err:
        raise error(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise error(f"{path}: invalid YAML: {err}") from None


def line_of(mapping, key):
    """``line N, column M: `` for a key of a Located mapping (empty for a plain one, built in code)."""
    if isinstance(mapping, Located):
        return f"{mapping.where(key)}: "
    return ""
