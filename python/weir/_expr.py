"""Expression builders: ``weir.col("x") * 2`` compiles to the SQL text DataFusion plans, the very
text a YAML spec would hold (``x * 2``), so both make the same logical graph."""

from __future__ import annotations

import re
from typing import Any, Iterable, Union

_PLAIN = re.compile(r"^[a-z_][a-z0-9_]*$")


def _ident(name: str) -> str:
    if _PLAIN.match(name):
        return name
    return '"' + name.replace('"', '""') + '"'


def _sql(value: Any) -> str:
    if isinstance(value, Expr):
        return value.sql
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"cannot use {value!r} in an expression")


class Expr:
    """An expression: SQL text that DataFusion compiles against the step's input schema.

    Build one with :func:`col`, :func:`lit` or :func:`func` and Python operators; ``str(expr)``
    is its SQL.
    """

    def __init__(self, sql: str) -> None:
        self.sql = sql

    def __str__(self) -> str:
        return self.sql

    def __repr__(self) -> str:
        return f"Expr({self.sql!r})"

    def _bin(self, op: str, other: Any) -> "Expr":
        return Expr(f"({self.sql} {op} {_sql(other)})")

    def _rbin(self, op: str, other: Any) -> "Expr":
        return Expr(f"({_sql(other)} {op} {self.sql})")

    def __add__(self, o: Any) -> "Expr":
        return self._bin("+", o)

    def __radd__(self, o: Any) -> "Expr":
        return self._rbin("+", o)

    def __sub__(self, o: Any) -> "Expr":
        return self._bin("-", o)

    def __rsub__(self, o: Any) -> "Expr":
        return self._rbin("-", o)

    def __mul__(self, o: Any) -> "Expr":
        return self._bin("*", o)

    def __rmul__(self, o: Any) -> "Expr":
        return self._rbin("*", o)

    def __truediv__(self, o: Any) -> "Expr":
        return self._bin("/", o)

    def __rtruediv__(self, o: Any) -> "Expr":
        return self._rbin("/", o)

    def __mod__(self, o: Any) -> "Expr":
        return self._bin("%", o)

    def __eq__(self, o: Any) -> "Expr":  # type: ignore[override]
        return self._bin("=", o)

    def __ne__(self, o: Any) -> "Expr":  # type: ignore[override]
        return self._bin("<>", o)

    def __lt__(self, o: Any) -> "Expr":
        return self._bin("<", o)

    def __le__(self, o: Any) -> "Expr":
        return self._bin("<=", o)

    def __gt__(self, o: Any) -> "Expr":
        return self._bin(">", o)

    def __ge__(self, o: Any) -> "Expr":
        return self._bin(">=", o)

    def __and__(self, o: Any) -> "Expr":
        return self._bin("AND", o)

    def __or__(self, o: Any) -> "Expr":
        return self._bin("OR", o)

    def __invert__(self) -> "Expr":
        return Expr(f"(NOT {self.sql})")

    def __neg__(self) -> "Expr":
        return Expr(f"(- {self.sql})")

    def __hash__(self) -> int:
        return hash(self.sql)

    def alias(self, name: str) -> "Expr":
        """The expression named ``name`` in a select (``expr AS name``)."""
        return Expr(f"{self.sql} AS {_ident(name)}")

    def is_null(self) -> "Expr":
        """True where the value is null."""
        return Expr(f"({self.sql} IS NULL)")

    def is_not_null(self) -> "Expr":
        """True where the value is not null."""
        return Expr(f"({self.sql} IS NOT NULL)")

    def isin(self, values: Iterable[Any]) -> "Expr":
        """True where the value is one of ``values``."""
        return Expr(f"({self.sql} IN ({', '.join(_sql(v) for v in values)}))")

    def cast(self, sql_type: str) -> "Expr":
        """The value as another SQL type (``CAST(x AS DOUBLE)``)."""
        return Expr(f"CAST({self.sql} AS {sql_type})")

    def like(self, pattern: str) -> "Expr":
        """SQL ``LIKE``."""
        return Expr(f"({self.sql} LIKE {_sql(pattern)})")


def col(name: str) -> Expr:
    """The column ``name``."""
    return Expr(_ident(name))


def lit(value: Any) -> Expr:
    """A literal value (number, string, bool or None)."""
    return Expr(_sql(value))


def func(name: str, *args: Any) -> Expr:
    """A call of the SQL function ``name`` (any DataFusion scalar function): ``func("lower", col("c"))``."""
    return Expr(f"{name}({', '.join(_sql(a) for a in args)})")


ExprLike = Union[str, Expr]


def to_sql(e: ExprLike) -> str:
    """An expression or SQL text as SQL text."""
    if isinstance(e, Expr):
        return e.sql
    if isinstance(e, str):
        return e
    raise TypeError(f"expected an expression or SQL text, found {e!r}")
