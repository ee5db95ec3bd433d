"""Identifiers of source code, found with tree-sitter (the paper's IT and MIP labels).

An identifier is a leaf whose node type names an identifier in the language's grammar, minus the
language's keywords (some grammars parse ``print``/``self``-like words as identifiers). Offsets are
character offsets into the ``str`` that was parsed, so they line up with a fast tokenizer's offsets.
"""

from __future__ import annotations

import functools
import importlib
import keyword
from typing import NamedTuple

from tree_sitter import Language, Parser

from zoo.errors import ConfigError

#: grammar package and identifier-like leaf types per language
GRAMMARS = {
    "python": ("tree_sitter_python", {"identifier"}),
    "java": ("tree_sitter_java", {"identifier", "type_identifier"}),
    "javascript": ("tree_sitter_javascript", {"identifier", "property_identifier", "shorthand_property_identifier"}),
    "go": ("tree_sitter_go", {"identifier", "field_identifier", "type_identifier", "package_identifier"}),
}

KEYWORDS = {
    "python": set(keyword.kwlist) | set(keyword.softkwlist),
    "java": {"abstract", "assert", "boolean", "break", "byte", "case", "catch", "char", "class", "const", "continue",
             "default", "do", "double", "else", "enum", "extends", "final", "finally", "float", "for", "goto", "if",
             "implements", "import", "instanceof", "int", "interface", "long", "native", "new", "package", "private",
             "protected", "public", "return", "short", "static", "strictfp", "super", "switch", "synchronized",
             "this", "throw", "throws", "transient", "try", "void", "volatile", "while", "var", "record", "yield",
             "true", "false", "null"},
    "javascript": {"break", "case", "catch", "class", "const", "continue", "debugger", "default", "delete", "do",
                   "else", "export", "extends", "finally", "for", "function", "if", "import", "in", "instanceof",
                   "new", "return", "super", "switch", "this", "throw", "try", "typeof", "var", "void", "while",
                   "with", "yield", "let", "static", "await", "async", "of", "true", "false", "null", "undefined"},
    "go": {"break", "case", "chan", "const", "continue", "default", "defer", "else", "fallthrough", "for", "func",
           "go", "goto", "if", "import", "interface", "map", "package", "range", "return", "select", "struct",
           "switch", "type", "var", "true", "false", "nil", "iota"},
}


class Identifier(NamedTuple):
    start: int  # character offset
    end: int
    name: str


@functools.cache
def parser_for(language: str) -> Parser:
    if language not in GRAMMARS:
        raise ConfigError(f"no tree-sitter grammar for language {language!r}; supported: {sorted(GRAMMARS)}")
    package = GRAMMARS[language][0]
    try:
        grammar = importlib.import_module(package)
    except ImportError as err:
        raise ConfigError(f"language {language!r} needs the grammar package; pip install "
                          f"{package.replace('_', '-')}") from err
    return Parser(Language(grammar.language()))


def extract_identifiers(code: str, language: str = "python") -> list[Identifier]:
    """Every identifier occurrence in ``code``, in source order, keywords filtered."""
    source = code.encode("utf-8")
    tree = parser_for(language).parse(source)
    leaf_types = GRAMMARS[language][1]
    keywords = KEYWORDS[language]
    # byte -> char offsets; identity for ASCII, which is most code
    ascii_only = len(source) == len(code)
    char_at = None if ascii_only else _byte_to_char(code)
    found = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.child_count == 0:
            if node.type in leaf_types:
                name = source[node.start_byte:node.end_byte].decode("utf-8", errors="replace")
                if name not in keywords:
                    start, end = (node.start_byte, node.end_byte) if ascii_only else (char_at[node.start_byte],
                                                                                      char_at[node.end_byte])
                    found.append(Identifier(start, end, name))
        else:
            stack.extend(reversed(node.children))
    return found


def _byte_to_char(code: str) -> list[int]:
    table = []
    for i, ch in enumerate(code):
        table.extend([i] * len(ch.encode("utf-8")))
    table.append(len(code))
    return table
