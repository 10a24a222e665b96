"""rego-cpp's C API as chit uses it: building `input`, reading a result, reading a plan.

rego-cpp (1.5, through regopy) keeps a string as the text it was read from and
is inconsistent about what that text is: an input string is kept raw, a policy
literal escaped, a computed string sometimes quoted; its JSON writer copies
the text out unescaped (an input string `a"b` comes back as `"a"b"`), its
built-ins work on the text (`count`, `substring`, hashes of escaped bytes) and
a NUL cuts a string short. A string is carried faithfully only when none of
those forms differ from the string itself: when it holds no `"`, no `\\` and
no control character (U+0000 to U+001F). Hence:

- `build_input` refuses any other string in the input (`UnfaithfulString`,
  naming where it is), so a decision never sees a string the engine would
  mangle;
- `read_value` reads the result as rego-cpp's node tree, never as its JSON
  text: no string can change the structure of a decision, an error node
  inside a value is an error (not a 500), an object with a duplicate key is
  refused, and a string outside the faithful form is refused.

Everything here raises `RegoValueError` (or its subclass) for anything it does
not understand; the engine turns that into a deny.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import re
from types import MappingProxyType
from typing import Any, Iterator

from regopy import rego_shared

_lib = rego_shared.rego
# Unfaithful characters: the quote and backslash of JSON's string syntax, and C0 controls.
_UNFAITHFUL = re.compile(r'["\\\x00-\x1f]')
MAX_DEPTH = 64

# rego-cpp node types (regopy's NodeKind); plan (IR) nodes are all "internal" and
# told apart by their type name.
OBJECT, OBJECT_ITEM, ARRAY, SET = 1006, 1007, 1004, 1005
INT, FLOAT, STRING, TRUE, FALSE, NULL, UNDEFINED = 1008, 1009, 1010, 1011, 1012, 1013, 1014
TERMS, BINDINGS, RESULTS, RESULT = 1015, 1016, 1017, 1018
ERROR, ERROR_MESSAGE, ERROR_AST, ERROR_CODE, ERROR_SEQ = 1800, 1801, 1802, 1803, 1804

_node_type = _lib.regoNodeType
_node_size = _lib.regoNodeSize
_node_get = _lib.regoNodeGet
_node_value_size = _lib.regoNodeValueSize
_node_value = _lib.regoNodeValue
_node_type_name_size = _lib.regoNodeTypeNameSize
_node_type_name = _lib.regoNodeTypeName
_lib.regoIsAvailableBuiltIn.restype = ctypes.c_bool
_lib.regoIsAvailableBuiltIn.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_lib.regoBundleNode.restype = ctypes.c_void_p
_lib.regoBundleNode.argtypes = [ctypes.c_void_p]

_new_input = _lib.regoNewInput
_free_input = _lib.regoFreeInput
_input_string = _lib.regoInputString
_input_int = _lib.regoInputInt
_input_float = _lib.regoInputFloat
_input_bool = _lib.regoInputBoolean
_input_null = _lib.regoInputNull
_input_object_item = _lib.regoInputObjectItem
_input_object = _lib.regoInputObject
_input_array = _lib.regoInputArray
_input_set = _lib.regoInputSet
_OK = 0


class RegoSet(tuple):  # type: ignore[type-arg]
    """A Rego set, read with `keep_sets` so that it can be handed back to the engine as a
    set (chit's tooling does, to replay a test's `with` values: chit.policy.coverage)."""


class RegoValueError(ValueError):
    """A value cannot be passed to rego-cpp, or its result cannot be read faithfully."""


class UnfaithfulString(RegoValueError):
    """A string rego-cpp cannot carry faithfully; `where` names it (`input.attestation.tags.team`)."""

    def __init__(self, where: str, text: str):
        character = _UNFAITHFUL.search(text)
        shown = repr(character.group()) if character else "a character"
        super().__init__(f"{where} contains {shown}, which the embedded policy engine cannot carry faithfully")
        self.where = where


def is_faithful(text: str) -> bool:
    return _UNFAITHFUL.search(text) is None


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def _member(where: str, key: str) -> str:
    """`input.tags.team`, or `input.tags["a b"]` for a key that is not a plain name (as JSON, ASCII)."""
    return f"{where}.{key}" if _PLAIN_KEY.fullmatch(key) else f"{where}[{json.dumps(key)}]"


def find_unfaithful(value: Any, where: str = "input") -> UnfaithfulString | None:
    """The first unfaithful string (key or value) in `value`, with its path; None if there is none."""
    if isinstance(value, str):
        return None if is_faithful(value) else UnfaithfulString(where, value)
    if isinstance(value, (dict, MappingProxyType)):
        for key, item in value.items():
            if isinstance(key, str) and not is_faithful(key):
                return UnfaithfulString(f"a key of {where}", key)
            found = find_unfaithful(item, _member(where, str(key)))
            if found is not None:
                return found
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = find_unfaithful(item, f"{where}[{index}]")
            if found is not None:
                return found
    return None


_libc = ctypes.CDLL(None)


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """rego-cpp prints compile errors on stdout, which is chit's audit log: while a
    policy compiles, stdout goes nowhere (chit reports the errors itself, on stderr)."""
    _libc.fflush(None)
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 1)
        yield
    finally:
        _libc.fflush(None)  # what rego-cpp buffered goes to /dev/null, not to the audit log later
        os.dup2(saved, 1)
        os.close(saved)


# --- input ------------------------------------------------------------------------------


# Strings seen to be faithful: most of an input (claim names, kinds, namespaces) repeats
# from one exchange to the next, and a set lookup costs a quarter of the search.
_faithful: set[str] = set()
_FAITHFUL_CACHE_SIZE = 4096


def _check(text: str) -> None:
    if _UNFAITHFUL.search(text):
        raise UnfaithfulString("input", text)
    if len(_faithful) >= _FAITHFUL_CACHE_SIZE:
        _faithful.clear()
    _faithful.add(text)


def _add(handle: int, value: Any) -> int:
    """Push `value` onto rego-cpp's input stack; returns the OR of the C status codes,
    or raises RegoValueError (an unfaithful string raises without a path: the caller
    finds it). On the hot path of every exchange: one ctypes call per scalar and two
    per object member, a set lookup per string."""
    kind = type(value)
    if kind is str:
        if value not in _faithful:
            _check(value)
        return _input_string(handle, value.encode("utf-8"))
    if kind is dict or kind is MappingProxyType:
        status = 0
        for key, item in value.items():
            if type(key) is not str:
                raise RegoValueError("an object key that is not a string")
            if key not in _faithful:
                _check(key)
            status |= _input_string(handle, key.encode("utf-8"))
            status |= _add(handle, item)
            status |= _input_object_item(handle)
        return status | _input_object(handle, len(value))
    if kind is RegoSet:
        status = 0
        for item in value:
            status |= _add(handle, item)
        return status | _input_set(handle, len(value))
    if kind is list or kind is tuple:
        status = 0
        for item in value:
            status |= _add(handle, item)
        return status | _input_array(handle, len(value))
    if kind is bool:
        return _input_bool(handle, value)
    if kind is int:
        if not -(2**63) <= value < 2**63:
            raise RegoValueError("an integer out of the policy engine's range")
        return _input_int(handle, value)
    if kind is float:
        if not math.isfinite(value):
            raise RegoValueError("a number out of the policy engine's range")
        return _input_float(handle, value)
    if value is None:
        return _input_null(handle)
    raise RegoValueError(f"a {kind.__name__} cannot be passed to the policy engine")


def set_input(interpreter: int, value: Any) -> None:
    """Make `value` the interpreter's `input`; raises UnfaithfulString (naming the path)
    or RegoValueError."""
    handle = _new_input()
    try:
        try:
            status = _add(handle, value)
        except UnfaithfulString:
            raise find_unfaithful(value) or UnfaithfulString("input", '"') from None
        except (UnicodeEncodeError, RecursionError):  # a lone surrogate; absurd nesting
            raise RegoValueError("the input holds a string that is not valid Unicode") from None
        if status != _OK or _lib.regoSetInput(interpreter, handle) != _OK:
            raise RegoValueError("the policy engine refused the input")
    finally:
        _free_input(handle)


# --- reading nodes ----------------------------------------------------------------------

_BUFFER_TOO_SMALL = 2
_buffer = ctypes.create_string_buffer(4096)
_buffer_size = 4096


def node_value(node: int) -> str:
    """The node's text (its location in what rego-cpp read or computed)."""
    global _buffer, _buffer_size
    status = _node_value(node, _buffer, _buffer_size)
    if status == _BUFFER_TOO_SMALL:
        _buffer_size = _node_value_size(node) + 1  # the size rego-cpp reports leaves out the NUL
        _buffer = ctypes.create_string_buffer(_buffer_size)
        status = _node_value(node, _buffer, _buffer_size)
    if status != _OK:
        raise RegoValueError("the policy engine did not hand over a value")
    return _buffer.value.decode("utf-8")


def node_type_name(node: int) -> str:
    size = _node_type_name_size(node) + 1
    buffer = ctypes.create_string_buffer(size)
    if _node_type_name(node, buffer, size) != _OK:
        raise RegoValueError("the policy engine did not hand over a node type")
    return buffer.value.decode("utf-8")


def children(node: int) -> Iterator[int]:
    for index in range(_node_size(node)):
        yield _node_get(node, index)


def _string(node: int) -> str:
    text = node_value(node)
    # A computed string is kept in quotes, an input or literal one without.
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1]
    if _UNFAITHFUL.search(text):
        raise RegoValueError(
            "the decision holds a string with a quote, a backslash or a control character, "
            "which the embedded policy engine does not carry faithfully"
        )
    return text


def error_message(node: int) -> str:
    """The message of an error node (`(error (errormsg …) (errorast …) (rego-errorcode …))`)."""
    message, code, undefined = "", "", False
    for child in children(node):
        kind = _node_type(child)
        if kind == ERROR_MESSAGE:
            message = node_value(child)
        elif kind == ERROR_CODE:
            code = node_value(child)
        elif kind == ERROR_AST:
            undefined = any(_node_type(c) == UNDEFINED for c in children(child))
    if message == "Not a term" and undefined:
        # What rego-cpp reports for a value a failing built-in left undefined (e.g. x / 0).
        message = "a value of the decision is undefined (a built-in failed, e.g. a division by zero)"
    return f"{message} ({code})" if code and code != "eval_error" else message or "evaluation error"


def read_value(node: int, depth: int = 0, keep_sets: bool = False) -> Any:
    """A rego-cpp value node as plain JSON data (sets as arrays, as OPA writes them)."""
    if depth > MAX_DEPTH:
        raise RegoValueError(f"the decision is nested deeper than {MAX_DEPTH} levels")
    kind = _node_type(node)
    if kind == STRING:
        return _string(node)
    if kind == OBJECT:
        value: dict[str, Any] = {}
        for index in range(_node_size(node)):
            item = _node_get(node, index)
            if _node_type(item) != OBJECT_ITEM or _node_size(item) != 2:
                raise RegoValueError("the decision holds a malformed object")
            key_node, value_node = _node_get(item, 0), _node_get(item, 1)
            if _node_type(key_node) != STRING:
                raise RegoValueError("the decision holds an object key that is not a string")
            key = _string(key_node)
            if key in value:
                raise RegoValueError(f"the decision holds the key {key!r} twice")
            value[key] = read_value(value_node, depth + 1, keep_sets)
        return value
    if kind == ARRAY or kind == SET:
        items = [read_value(_node_get(node, index), depth + 1, keep_sets) for index in range(_node_size(node))]
        return RegoSet(items) if keep_sets and kind == SET else items
    if kind == TRUE:
        return True
    if kind == FALSE:
        return False
    if kind == NULL:
        return None
    if kind == INT:
        return int(node_value(node))
    if kind == FLOAT:
        number = float(node_value(node))
        if not math.isfinite(number):
            raise RegoValueError("the decision holds a number out of range")
        # As rego-cpp's and OPA's JSON writers do: 900 / 1 is 900, not 900.0.
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if kind == ERROR or kind == ERROR_SEQ:
        raise RegoValueError(error_message(node if kind == ERROR else _node_get(node, 0)))
    if kind == UNDEFINED:
        raise RegoValueError("a value of the decision is undefined")
    raise RegoValueError(f"the decision holds a {node_type_name(node)} node")


def read_result(output: int, keep_sets: bool = False) -> Any:
    """The value of an entrypoint query's output: None when undefined."""
    node = _lib.regoOutputNode(output)
    if not node:
        raise RegoValueError("the policy engine returned no result")
    kind = _node_type(node)
    if kind in (ERROR, ERROR_SEQ):
        raise RegoValueError(error_message(node if kind == ERROR else _node_get(node, 0)))
    if kind == UNDEFINED:
        return None
    if kind != RESULTS:
        raise RegoValueError(f"the policy engine returned a {node_type_name(node)} node")
    results = list(children(node))
    if not results:
        return None
    if len(results) != 1 or _node_type(results[0]) != RESULT:
        raise RegoValueError("the policy engine returned several results")
    terms = next((c for c in children(results[0]) if _node_type(c) == TERMS), None)
    if terms is None or _node_size(terms) == 0:
        return None
    if _node_size(terms) != 1:
        raise RegoValueError("the policy engine returned several values")
    term = _node_get(terms, 0)
    return None if _node_type(term) == UNDEFINED else read_value(term, keep_sets=keep_sets)


# --- plans (rego-cpp's intermediate representation) ----------------------------------------


def is_available_builtin(interpreter: int, name: str) -> bool:
    """Whether rego-cpp implements the built-in `name` (placeholders it only declares are not)."""
    return bool(_lib.regoIsAvailableBuiltIn(interpreter, name.encode("utf-8")))


def bundle_node(bundle: int) -> int:
    return _lib.regoBundleNode(bundle)
