"""Claims: a sentence that reads a result off a run, checked by the run itself.

A notebook states a result with one call right after the run that shows it::

    tlc.claim("cnn_beats_mlp", "The CNN beats the MLP on test digits by 2 points or more.",
              "cnn - mlp >= margin", cnn=cnn_acc, mlp=mlp_acc, margin=0.02,
              why="fewer epochs than the profile's default leave the CNN undertrained")

The condition is a small arithmetic comparison over the named numbers (and `margin`),
so whether a claim holds can be recomputed from the run card alone (`recheck`). The
claim prints its sentence with the numbers and a mark; it goes into the run card as an
entry of `claims`. In the smoke profile a claim is recorded but never counts as failed
(the sizes are too small to mean anything); in cpu / gpu a failed claim prints one line:
what this run did not show, what the benchmark usually measures, and the likely reason.
`tl-course run --strict` turns failed claims into a non-zero exit.
"""

from __future__ import annotations

import ast
import json
import math
import operator
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

from .runcard import card_path, merge_into_card

# The benchmark's measurements over seeds (benchmarks/claims.py writes this file).
REFERENCE_FILE = "reference_results.json"

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv}
_CMPOPS = {ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Lt: operator.lt,
           ast.LtE: operator.le}
_FUNCS = {"abs": abs, "min": min, "max": max}


class ClaimError(ValueError):
    """A claim that cannot be evaluated (bad condition, missing or non-finite number)."""


def _eval(node: ast.AST, numbers: Mapping[str, float]) -> Any:
    """Evaluate the small expression language of conditions (no attribute access, no calls
    beyond abs / min / max): comparisons, and / or / not, + - * /, names, numbers."""
    if isinstance(node, ast.Expression):
        return _eval(node.body, numbers)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return float(node.value)
    if isinstance(node, ast.Name):
        if node.id not in numbers:
            raise ClaimError(f"the condition uses {node.id!r}, which is not among the numbers "
                             f"given ({', '.join(numbers) or 'none'}); pass {node.id}=...")
        return numbers[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.Not):
        value = _eval(node.operand, numbers)
        return -value if isinstance(node.op, ast.USub) else not value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _BINOPS[type(node.op)](_eval(node.left, numbers), _eval(node.right, numbers))
    if isinstance(node, ast.BoolOp):
        values = [bool(_eval(v, numbers)) for v in node.values]
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.Compare) and all(type(op) in _CMPOPS for op in node.ops):
        left = _eval(node.left, numbers)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = _eval(comparator, numbers)
            if not _CMPOPS[type(op)](left, right):
                return False
            left = right
        return True
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCS and not node.keywords):
        return _FUNCS[node.func.id](*(_eval(a, numbers) for a in node.args))
    raise ClaimError(f"unsupported piece in a claim's condition: {ast.unparse(node)!r}; use "
                     "numbers, names, + - * /, abs/min/max, comparisons, and/or/not")


def evaluate(condition: str, numbers: Mapping[str, float]) -> bool:
    """Whether `condition` holds for `numbers` (the same rule `claim` and `recheck` use)."""
    try:
        tree = ast.parse(condition, mode="eval")
    except SyntaxError as exc:
        raise ClaimError(f"cannot parse the condition {condition!r}: {exc.msg}") from None
    result = _eval(tree, numbers)
    if not isinstance(result, bool):
        raise ClaimError(f"the condition {condition!r} must compare (e.g. 'a - b >= margin'), "
                         "not compute a number")
    return result


@cache
def reference() -> dict[str, Any]:
    """The benchmark's results shipped with the package ({} when there are none)."""
    try:
        text = resources.files("tl_course").joinpath(REFERENCE_FILE).read_text()
    except (FileNotFoundError, OSError):
        return {}
    return json.loads(text)


def usually(name: str, ref: Mapping[str, Any] | None = None) -> str:
    """What the benchmark measured for claim `name`: held k of n seeds, numbers mean ± std."""
    ref = reference() if ref is None else ref
    entry = ref.get("claims", {}).get(name)
    if not entry:
        return "no benchmark figures for this claim yet (run benchmarks/claims.py)"
    numbers = ", ".join(f"{k} {v['mean']:.3f} ± {v['std']:.3f}"
                        for k, v in entry.get("numbers", {}).items())
    profile = ref.get("profile", "?")
    return (f"the benchmark ({profile} profile, seeds "
            f"{', '.join(map(str, ref.get('seeds', [])))}) saw it hold in {entry['held']} of "
            f"{entry['runs']} runs, with {numbers}")


def _format(numbers: Mapping[str, float]) -> str:
    return ", ".join(f"{k} = {v:.3f}" for k, v in numbers.items())


def _lower(text: str) -> str:
    """'The CNN beats ...' -> 'the CNN beats ...' (inside a sentence); acronyms stay."""
    return text[:1].lower() + text[1:] if text[1:2].islower() else text


def claim(
    name: str,
    text: str,
    condition: str,
    *,
    margin: float = 0.0,
    why: str = "",
    profile: str | None = None,
    env: Mapping[str, str] | None = None,
    **numbers: float,
) -> bool:
    """State a result: check `condition` over `numbers` (and `margin`), print, record.

    `text` is the sentence the notebook asserts; `why` the likely reason when it fails.
    `profile` is the run's profile name ("smoke" never fails; None: as `get_profile`
    resolves it, which is what `Session.claim` passes explicitly). Returns whether it held.
    """
    if not name.isidentifier():
        raise ClaimError(f"claim names must be identifiers like 'cnn_beats_mlp', got {name!r}")
    if "margin" in numbers:
        raise ClaimError("pass the margin as margin=..., not among the numbers")
    values = {k: float(v) for k, v in numbers.items()}
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if bad:
        raise ClaimError(f"claim {name!r}: {', '.join(bad)} is not a finite number "
                         "(did a run diverge?)")
    holds = evaluate(condition, {**values, "margin": float(margin)})
    if profile is None:  # as the notebook's session resolved it: argument, env, default
        from .profile import get_profile

        profile = get_profile(env=env).name
    smoke = profile == "smoke"
    shown = f"({_format(values)}; {condition}, margin {margin:g})"
    if holds:
        print(f"claim {name} holds: {text} {shown}")
    elif smoke:
        print(f"claim {name} not shown in the smoke profile (too small to mean anything): "
              f"{text} {shown}")
    else:
        reason = f"; likely reason: {why}" if why else ""
        said = _lower(text).rstrip(".")
        print(f"claim {name} DID NOT HOLD: this run did not show that {said} {shown}; "
              f"usually {usually(name)}{reason}")
    entry = {"name": name, "text": text, "condition": condition, "margin": float(margin),
             "numbers": values, "holds": holds, "profile": profile, "why": why}
    path = card_path(env)
    if path is not None:
        merge_into_card(path, {"claims": [entry]})
    return holds


def recheck(entry: Mapping[str, Any]) -> bool:
    """Recompute `holds` for a run card's claim entry from its numbers and margin."""
    return evaluate(entry["condition"], {**entry["numbers"], "margin": entry["margin"]})


def failed(card: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The claims of a run card that failed and count (recomputed; smoke never counts)."""
    if card.get("profile") == "smoke":
        return []
    return [c for c in card.get("claims", []) if not recheck(c)]
