"""Building and stepping a torch optimizer without importing torch's compiler stack.

torch's optimizers import ``torch._dynamo`` (a second or more of CPU) in every process that uses
one, for two markers that only matter under ``torch.compile``:

- ``Optimizer.add_param_group``, ``zero_grad``, ``state_dict`` and ``load_state_dict`` are
  wrapped by ``torch._disable_dynamo``, which imports the compiler to build a "never compile
  this" version of the method the first time it runs;
- every optimizer's ``step`` runs inside ``_use_grad_for_differentiable``, which imports it
  to call ``torch._dynamo.graph_break()`` around the update (a no-op in eager mode).

In a sweep that import lands in every trial actor's first epoch, while the other trials use
the cores. Nothing needs either marker while ``torch._dynamo`` has never been imported: no
frame can be under compilation. So :func:`defer_compiler_import` gives those methods a
stand-in marker, and :func:`eager_optimizer` returns a subclass whose ``step`` sets the grad
mode as torch's wrapper does and runs the update, skipping only the graph breaks. Both hand
over to torch's own code path the moment ``torch._dynamo`` is imported by anything
(``torch.compile`` in a user's trainable, say): the arithmetic is torch's either way, only the
import is deferred until something uses the compiler.

Both inspect private wrappers of torch (``torch._compile._disable_dynamo``,
``torch.optim.optimizer._use_grad_for_differentiable``); if either changes shape, the
methods and classes are left as torch made them and torch imports its compiler as before.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import torch

_MARKER = "__dynamo_disable"  # where torch._compile caches the disabled version of a method
_METHODS = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")
_done = False


def speedups_enabled() -> bool:
    """caviar's switch over speed-ups that use private internals (``CAVIAR_NO_SPEEDUPS``; the
    orchestrator's ``speedups`` module reads the same variable): off, torch is used as is."""
    return os.environ.get("CAVIAR_NO_SPEEDUPS", "") in ("", "0")


def defer_compiler_import() -> int:
    """Install the stand-in markers on ``torch.optim.Optimizer`` (idempotent).

    Returns how many methods got one (0 when ``torch._dynamo`` is already imported, when
    called before, or when torch's wrapper is not the one this module knows)."""
    global _done
    if _done or "torch._dynamo" in sys.modules or not speedups_enabled():
        return 0
    _done = True
    installed = 0
    for name in _METHODS:
        wrapper = torch.optim.Optimizer.__dict__.get(name)
        target = _disabled_target(wrapper)
        if target is None:
            continue
        method, recursive = target
        if getattr(method, _MARKER, None) is None:
            setattr(method, _MARKER, _until_compiler_loads(method, recursive))
            installed += 1
    return installed


def _disabled_target(wrapper: Any) -> tuple[Callable[..., Any], bool] | None:
    """The method inside a ``torch._disable_dynamo`` wrapper, and its ``recursive`` flag."""
    code = getattr(wrapper, "__code__", None)
    if code is None or code.co_name != "inner" or not code.co_filename.endswith("_compile.py"):
        return None
    if code.co_freevars != ("fn", "recursive") or wrapper.__closure__ is None:
        return None
    method, recursive = (cell.cell_contents for cell in wrapper.__closure__)
    if not callable(method) or getattr(wrapper, "__wrapped__", None) is not method:
        return None
    return method, bool(recursive)


def _until_compiler_loads(method: Callable[..., Any], recursive: bool) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        if "torch._dynamo" not in sys.modules:
            return method(*args, **kwargs)  # nothing can be compiling: no marker needed
        import torch._dynamo

        disabled = torch._dynamo.disable(method, recursive, wrapping=False)
        setattr(method, _MARKER, disabled)  # torch's own marker from now on
        return disabled(*args, **kwargs)

    return call


_eager_classes: dict[type, type] = {}


def eager_optimizer(cls: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """``cls``, or a subclass of it whose ``step`` skips torch's graph-break markers while
    ``torch._dynamo`` is not imported (see the module's docstring)."""
    if not speedups_enabled():
        return cls
    if cls in _eager_classes:
        return _eager_classes[cls]
    step = cls.__dict__.get("step")
    raw = getattr(step, "__wrapped__", None)
    code = getattr(step, "__code__", None)
    if raw is None or code is None or code.co_name != "_use_grad":
        _eager_classes[cls] = cls
        return cls

    @functools.wraps(raw)
    def eager_step(self: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        if "torch._dynamo" in sys.modules:
            return step(self, *args, **kwargs)  # torch's own path, graph breaks included
        previous = torch.is_grad_enabled()
        try:
            torch.set_grad_enabled(self.defaults["differentiable"])
            return raw(self, *args, **kwargs)
        finally:
            torch.set_grad_enabled(previous)

    eager = type(cls.__name__, (cls,), {"step": eager_step, "__module__": __name__})
    eager.__qualname__ = f"eager_optimizer({cls.__qualname__})"
    _eager_classes[cls] = eager
    return eager
