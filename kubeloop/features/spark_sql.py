"""A use case's feature SQL, written once for DuckDB, compiled to Spark SQL with SQLGlot.

`EntitySpec.query` is the one definition of a feature table. The Spark engine
(`kubeloop.features.spark_job`) runs what `to_spark_sql` makes of it, so the two engines
cannot drift apart: there is no second copy to forget. SQLGlot's DuckDB -> Spark transpiler
does most of the work; this module closes the gaps where the two engines' semantics differ,
each of which would change a value rather than fail:

* ``epoch_us(ts)``: Spark has no such function (SQLGlot passes it through); it is
  ``unix_micros(ts)``.
* ``arg_max(x, o)``: DuckDB skips rows whose ``x`` is NULL, Spark's ``max_by`` keeps them;
  the ordering is nulled where ``x`` is NULL, which ``max_by`` skips.
* Decimal literals (``24.0``): both engines read them as DECIMAL, but DuckDB's ``/`` of a
  DECIMAL yields DOUBLE while Spark keeps DECIMAL (other rounding); they become DOUBLE
  literals, which is what DuckDB computes with.
* ``$name`` parameters: rendered as DOUBLE literals (Python's round-trip repr, so the
  value is the same double DuckDB is handed), making the Spark SQL self-contained: the
  cluster job gets one string, no parameter plumbing.

Anything the transpiler cannot render raises `SparkSqlError` naming the entity: a use case
whose SQL does not compile is refused before a Spark job starts.
"""

from __future__ import annotations

from collections.abc import Mapping

from kubeloop.errors import KubeloopError
from kubeloop.usecase import EntitySpec


class SparkSqlError(KubeloopError):
    """A use case's feature SQL does not compile to Spark SQL."""


def _double(value: float):
    from sqlglot import exp

    return exp.cast(exp.Literal.number(repr(float(value))), exp.DataType.build("DOUBLE"))


def _rewrite(node, params: Mapping[str, float], entity: str):
    from sqlglot import exp

    if isinstance(node, exp.Placeholder | exp.Parameter):
        name = node.name if isinstance(node, exp.Placeholder) else node.this.name
        if name not in params:
            raise SparkSqlError(
                f"entity {entity!r}: the query uses the parameter ${name}, which the feature "
                f"build does not set (it sets {sorted(params)})"
            )
        return _double(params[name])
    if isinstance(node, exp.Anonymous) and node.name.lower() == "epoch_us":
        return exp.Anonymous(this="UNIX_MICROS", expressions=node.expressions)
    if isinstance(node, exp.ArgMax | exp.ArgMin):
        value, ordering = node.this, node.expression
        guarded = exp.If(this=exp.Not(this=exp.Is(this=value.copy(), expression=exp.Null())),
                         true=ordering, false=exp.Null())
        return type(node)(this=value, expression=guarded)
    if isinstance(node, exp.Literal) and node.is_number and not node.is_int:
        # Only literal numbers with a point or an exponent: integers stay integers.
        parent = node.parent
        if not (isinstance(parent, exp.Cast) and parent.to.is_type("double")):
            return _double(float(node.this))
    return node


def to_spark_sql(spec: EntitySpec, params: Mapping[str, float]) -> str:
    """`spec.query` (DuckDB SQL over the view ``events``) as one Spark SQL statement.

    `params` gives every ``$name`` parameter the query uses (the build's prior). Raises
    SparkSqlError when the query does not parse as DuckDB SQL or cannot be rendered.
    """
    return _compile(spec, params, split=False)[0]


def to_spark_sql_split(spec: EntitySpec, params: Mapping[str, float]) -> tuple[str, str | None]:
    """`to_spark_sql`'s statement as (the query without its final ORDER BY, that ORDER BY's
    keys as SQL), when every key is a column of the query's output; else (the whole
    statement, None).

    Why: Spark sorts globally by sampling its input first, which runs the plan below the
    sort twice (the window functions included). The Spark engine caches the unsorted result
    and sorts the cache: the same rows in the same order, the windows computed once."""
    return _compile(spec, params, split=True)


def _compile(spec: EntitySpec, params: Mapping[str, float], *, split: bool):
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import SqlglotError

    try:
        tree = sqlglot.parse_one(spec.query, read="duckdb")
        tree = tree.transform(lambda node: _rewrite(node, params, spec.name))
        order = tree.args.get("order") if split and isinstance(tree, exp.Select) else None
        names = set(tree.named_selects) if order is not None else set()
        if order is not None and all(
            isinstance(key.this, exp.Column) and not key.this.table and key.this.name in names
            for key in order.expressions
        ):
            keys = ", ".join(key.sql(dialect="spark") for key in order.expressions)
            tree = tree.copy()
            tree.set("order", None)
        else:
            keys = None
        sql = tree.sql(dialect="spark", pretty=True, unsupported_level=sqlglot.ErrorLevel.RAISE)
        return sql, keys
    except SqlglotError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SparkSqlError(
            f"entity {spec.name!r}: its feature query does not compile to Spark SQL ({first}); "
            "use functions both DuckDB and Spark have (see docs/new-use-case.md)"
        ) from None
