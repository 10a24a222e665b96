"""The embedded policy engine: rego-cpp (regopy) in the chit process.

The policy directory is compiled once, at start, into a bundle with one
entrypoint (`chit/decision`); each exchange sets the input and runs that plan.
rego-cpp is not OPA: what it would decide differently is refused at load
(`chit.policy.dialect`), and strings it cannot carry faithfully never reach it
or leave it (`chit.policy.regocpp`). The policy guide lists the differences;
production decisions belong to OPA (`engine: opa`).

Two costs dominate an evaluation: building the input (chit calls rego-cpp's C
builder functions directly, about twice as fast as regopy's `Input`), and
object lookups in data, which rego-cpp performs by a linear scan — the shipped
policy therefore keeps each lookup level small (see policies/README.md).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import regopy
from regopy import rego_shared

from chit.policy import PolicyEvaluationError, PolicyInputUnrepresentable
from chit.policy import dialect, regocpp
from chit.policy.bundle import ENTRYPOINT, PolicyBundle, PolicyLoadError, format_compile_error

log = logging.getLogger("chit.policy")

regopy.set_default_log_level("None")  # compile errors are reported by chit, not printed by rego-cpp

__all__ = ["EmbeddedEngine", "PolicyEvaluationError"]


class EmbeddedEngine:
    """Evaluates `data.chit.decision` with rego-cpp, compiled once."""

    name = "embedded"

    def __init__(self, bundle: PolicyBundle):
        self.bundle = bundle
        # `with` is refused before compiling: `with input as …` crashes the process.
        problems = dialect.source_problems(bundle.modules)
        if problems:
            raise PolicyLoadError(f"{bundle.root}: the embedded engine cannot run this policy:\n" + "\n".join(problems))
        self._interpreter = regopy.Interpreter()
        try:
            with regocpp.quiet_stdout():
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
        try:
            dialect.check(self._impl, self._plan_impl, bundle.modules, bundle.data)
        except dialect.DialectError as error:
            raise PolicyLoadError(f"{bundle.root}: the embedded engine would not decide as OPA does:\n{error}") from None
        self._entrypoint = ENTRYPOINT.encode()

    def evaluate(self, policy_input: dict[str, Any]) -> Any:
        """The decision value, or None when undefined.

        Raises PolicyInputUnrepresentable (a string of the input the engine cannot
        carry) or PolicyEvaluationError (deny)."""
        try:
            regocpp.set_input(self._impl, policy_input)
        except regocpp.UnfaithfulString as error:
            raise PolicyInputUnrepresentable(str(error)) from None
        except regocpp.RegoValueError as error:
            raise PolicyInputUnrepresentable(f"the policy input cannot be passed to the embedded engine: {error}") from None
        output = rego_shared.rego.regoBundleQueryEntrypoint(self._impl, self._plan_impl, self._entrypoint)
        if not output:
            raise PolicyEvaluationError(rego_shared.rego_get_error(self._impl) or "evaluation failed")
        try:
            if not rego_shared.rego_output_ok(output):
                raise PolicyEvaluationError("evaluation error (conflicting rule values or a failing built-in)")
            return regocpp.read_result(output)
        except (ValueError, UnicodeDecodeError) as error:  # RegoValueError, or a number rego-cpp wrote oddly
            raise PolicyEvaluationError(str(error)) from None
        finally:
            rego_shared.rego_free_output(output)

    async def decide(self, policy_input: dict[str, Any]) -> Any:
        return self.evaluate(policy_input)

    async def ready(self) -> bool:
        return True

    async def unready_reason(self) -> str | None:
        return None  # compiled at start: it decides as long as the process runs

    async def close(self) -> None:
        return None
