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
from pathlib import Path
from typing import Any, Callable

import regopy
from regopy import rego_shared

from chit.policy import PolicyEvaluationError, PolicyInputUnrepresentable
from chit.policy import dialect, regocpp
from chit.policy.bundle import ENTRYPOINT, PolicyBundle, PolicyLoadError, format_compile_error
from chit.policy.plancache import PlanCache

log = logging.getLogger("chit.policy")

regopy.set_default_log_level("None")  # compile errors are reported by chit, not printed by rego-cpp

__all__ = ["CompiledPolicy", "EmbeddedEngine", "NO_INPUT", "PolicyEvaluationError"]

NO_INPUT: Any = object()  # evaluate with `input` undefined


class CompiledPolicy:
    """Modules and data compiled once into one rego-cpp plan with any number of
    entrypoints (`pkg/rule`), each then evaluated without compiling again.

    `locate(module, offset)` names places in modules chit rewrote before compiling
    (`chit.policy.suite`); `tests` are the modules that may use `with`; `cache`
    keeps the plan for the next run of the same inputs (`chit.policy.plancache`).
    """

    def __init__(
        self,
        root: Path,
        modules: dict[str, str],
        data: dict[str, Any],
        entrypoints: list[str],
        *,
        sources: dict[str, str] | None = None,
        tests: frozenset[str] = frozenset(),
        locate: Callable[[str, int], str | None] | None = None,
        cache: PlanCache | None = None,
    ):
        sources = modules if sources is None else sources
        # `with` is refused before compiling in what is not a test: `with input as …` crashes the process.
        problems = dialect.source_problems(sources, tests)
        if problems:
            raise PolicyLoadError(f"{root}: the embedded engine cannot run this policy:\n" + "\n".join(problems))
        self._interpreter = regopy.Interpreter()
        key = cache.key(modules, data, entrypoints) if cache is not None else ""
        loaded = cache.load(self._interpreter, key) if cache is not None else None
        if loaded is not None:  # compiled from exactly these inputs, and checked, by an earlier run
            self._plan = loaded
        else:
            self._plan = self._compile(root, modules, data, entrypoints, locate)
        self._impl = self._interpreter._impl
        self._plan_impl = self._plan._impl
        if loaded is None:
            try:
                dialect.check(self._impl, self._plan_impl, sources, data, tests=tests)
            except dialect.DialectError as error:
                raise PolicyLoadError(f"{root}: the embedded engine would not decide as OPA does:\n{error}") from None
            if cache is not None:
                cache.save(self._interpreter, self._plan, key)
        self.entrypoints = frozenset(entrypoints)
        self._input_set = False

    def _compile(self, root: Path, modules: dict[str, str], data: dict[str, Any], entrypoints: list[str], locate: Callable[[str, int], str | None] | None) -> Any:
        try:
            with regocpp.quiet_stdout():
                for name, source in modules.items():
                    self._interpreter.add_module(name, source)
                self._interpreter.add_data_json(json.dumps(data))
                plan = self._interpreter.build(None, entrypoints)
        except regopy.RegoError as error:
            detail = format_compile_error(str(error.args[0]) if error.args else "", modules, locate)
            raise PolicyLoadError(f"{root}: policy does not compile:\n{detail}") from None
        if not plan.ok():
            raise PolicyLoadError(f"{root}: policy does not compile")
        return plan

    def evaluate(self, entrypoint: str, policy_input: Any = NO_INPUT, *, keep_sets: bool = False) -> Any:
        """The value of one entrypoint (None when undefined), for `policy_input`, or with
        `input` undefined (as `opa test` runs tests) when none is given. An input, once
        set, stays: a plan evaluated with an input cannot go back to none.

        Raises PolicyInputUnrepresentable (a string of the input the engine cannot
        carry) or PolicyEvaluationError (deny)."""
        if policy_input is not NO_INPUT:
            try:
                regocpp.set_input(self._impl, policy_input)
            except regocpp.UnfaithfulString as error:
                raise PolicyInputUnrepresentable(str(error)) from None
            except regocpp.RegoValueError as error:
                raise PolicyInputUnrepresentable(f"the policy input cannot be passed to the embedded engine: {error}") from None
            self._input_set = True
        elif self._input_set:
            raise ValueError("this plan was evaluated with an input: it cannot evaluate without one")
        output = rego_shared.rego.regoBundleQueryEntrypoint(self._impl, self._plan_impl, entrypoint.encode())
        if not output:
            raise PolicyEvaluationError(rego_shared.rego_get_error(self._impl) or "evaluation failed")
        try:
            if not rego_shared.rego_output_ok(output):
                raise PolicyEvaluationError("evaluation error (conflicting rule values or a failing built-in)")
            return regocpp.read_result(output, keep_sets)
        except (ValueError, UnicodeDecodeError) as error:  # RegoValueError, or a number rego-cpp wrote oddly
            raise PolicyEvaluationError(str(error)) from None
        finally:
            rego_shared.rego_free_output(output)


class EmbeddedEngine:
    """Evaluates `data.chit.decision` with rego-cpp, compiled once."""

    name = "embedded"

    def __init__(self, bundle: PolicyBundle):
        self.bundle = bundle
        self._policy = CompiledPolicy(bundle.root, bundle.modules, bundle.data, [ENTRYPOINT])

    def evaluate(self, policy_input: dict[str, Any]) -> Any:
        """The decision value, or None when undefined.

        Raises PolicyInputUnrepresentable (a string of the input the engine cannot
        carry) or PolicyEvaluationError (deny)."""
        return self._policy.evaluate(ENTRYPOINT, policy_input)

    async def decide(self, policy_input: dict[str, Any]) -> Any:
        return self.evaluate(policy_input)

    async def ready(self) -> bool:
        return True

    async def unready_reason(self) -> str | None:
        return None  # compiled at start: it decides as long as the process runs

    async def close(self) -> None:
        return None
