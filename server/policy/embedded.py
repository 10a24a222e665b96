"""The embedded policy engine: rego-cpp (regopy) in the chit process.

The policy directory is compiled once, at start, into a bundle with one
entrypoint (`chit/decision`); each exchange sets the input and runs that plan.

Two costs dominate an evaluation and are handled here: building the input
(regopy's `Input` walks the value through a Python wrapper per node; chit
calls the same C builder functions directly, about twice as fast), and object
lookups in data, which rego-cpp performs by a linear scan — the shipped policy
therefore keeps each lookup level small (see policies/README.md).
"""

from __future__ import annotations

import json
import logging
from types import MappingProxyType
from typing import Any

import regopy
from regopy import rego_shared

from server.policy import PolicyEvaluationError
from server.policy.bundle import ENTRYPOINT, PolicyBundle, PolicyLoadError, format_compile_error, uses_whole_input_override

log = logging.getLogger("chit.policy")

regopy.set_default_log_level("None")  # compile errors are reported by chit, not printed by rego-cpp

_lib = rego_shared.rego
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
_OK = 0

__all__ = ["EmbeddedEngine", "PolicyEvaluationError"]


def _add_input(handle: int, value: Any) -> int:
    """Push `value` onto rego-cpp's input stack; returns the OR of the C status codes.

    This is on the hot path of every exchange: one ctypes call per scalar and
    two per object member, nothing else.
    """
    kind = type(value)
    if kind is str:
        return _input_string(handle, value.encode("utf-8"))
    if kind is dict or kind is MappingProxyType:
        status = 0
        for key, item in value.items():
            status |= _input_string(handle, key.encode("utf-8"))
            status |= _input_string(handle, item.encode("utf-8")) if type(item) is str else _add_input(handle, item)
            status |= _input_object_item(handle)
        return status | _input_object(handle, len(value))
    if kind is list or kind is tuple:
        status = 0
        for item in value:
            status |= _add_input(handle, item)
        return status | _input_array(handle, len(value))
    if kind is bool:
        return _input_bool(handle, value)
    if kind is int:
        if not -(2**63) <= value < 2**63:
            raise TypeError("integer out of the policy engine's range")
        return _input_int(handle, value)
    if kind is float:
        return _input_float(handle, value)
    if value is None:
        return _input_null(handle)
    raise TypeError(f"cannot pass {kind.__name__} to the policy")


class EmbeddedEngine:
    """Evaluates `data.chit.decision` with rego-cpp, compiled once."""

    name = "embedded"

    def __init__(self, bundle: PolicyBundle):
        self.bundle = bundle
        for name, source in bundle.modules.items():
            if uses_whole_input_override(source):
                raise PolicyLoadError(
                    f"{bundle.root / name}: `with input as …` crashes the embedded engine (rego-cpp); "
                    "replace input key by key (`with input.attestation as …`) or use engine: opa"
                )
        self._interpreter = regopy.Interpreter()
        try:
            for name, source in bundle.modules.items():
                self._interpreter.add_module(name, source)
            self._interpreter.add_data_json(json.dumps(bundle.data))
            self._plan = self._interpreter.build(None, [ENTRYPOINT])
        except regopy.RegoError as error:
            detail = format_compile_error(str(error.args[0]) if error.args else "", bundle.modules)
            raise PolicyLoadError(f"{bundle.root}: policy does not compile:\n{detail}") from None
        if not self._plan.ok():
            raise PolicyLoadError(f"{bundle.root}: policy does not compile")
        self._impl = self._interpreter._impl
        self._plan_impl = self._plan._impl
        self._entrypoint = ENTRYPOINT.encode()

    def evaluate(self, policy_input: dict[str, Any]) -> Any:
        """The decision value, or None when undefined. Raises PolicyEvaluationError."""
        handle = _new_input()
        try:
            try:
                status = _add_input(handle, policy_input)
            except (TypeError, AttributeError, UnicodeEncodeError) as error:
                raise PolicyEvaluationError(f"policy input not representable: {error}") from None
            if status != _OK or _lib.regoSetInput(self._impl, handle) != _OK:
                raise PolicyEvaluationError("the policy engine refused the input")
        finally:
            _free_input(handle)
        output = _lib.regoBundleQueryEntrypoint(self._impl, self._plan_impl, self._entrypoint)
        if not output:
            raise PolicyEvaluationError(rego_shared.rego_get_error(self._impl) or "evaluation failed")
        try:
            if not rego_shared.rego_output_ok(output):
                raise PolicyEvaluationError("evaluation error (conflicting rule values or a failing built-in)")
            text = rego_shared.rego_output_string(output)
        finally:
            rego_shared.rego_free_output(output)
        if text == "undefined":
            return None
        result = json.loads(text)
        expressions = result.get("expressions") if isinstance(result, dict) else None
        if not expressions:
            return None
        return expressions[0]

    async def decide(self, policy_input: dict[str, Any]) -> Any:
        return self.evaluate(policy_input)

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        return None
