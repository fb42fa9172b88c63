"""scikit-learn's parameter protocol for the tools' estimators, without depending on scikit-learn:
``get_params``/``set_params`` over the keyword-only arguments of ``__init__`` (each stored under
its own name), so ``sklearn.base.clone`` and grid searches work on them."""

from __future__ import annotations

import inspect

from ..errors import InvalidParameterError


class Params:
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return sorted(p.name for p in sig.parameters.values() if p.kind == p.KEYWORD_ONLY)

    def get_params(self, deep: bool = True) -> dict:
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params) -> "Params":
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise InvalidParameterError(f"{type(self).__name__} has no parameter {name!r}; valid: {valid}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"
