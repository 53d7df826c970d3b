"""Lazy attribute exports for packages (PEP 562), so importing a package stays cheap."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, table: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Build ``__getattr__``/``__dir__`` for ``package`` from ``{name: "module[:attr]"}``.

    ``"module"`` is relative to ``package``; without ``:attr`` the name is the module itself.
    """
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        try:
            target = table[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        module_name, _, attr = target.partition(":")
        module = importlib.import_module(f"{package}.{module_name}")
        value = getattr(module, attr) if attr else module
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(table) | {k for k in namespace if not k.startswith("_")})

    return __getattr__, __dir__
