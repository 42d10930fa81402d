"""Segments in SQL, and audience walks that filter in SQL.

A segment filter is translated into a WHERE clause over `subscribers` part by part
(`compile_where`). A part whose meaning SQL can state exactly (profile columns; custom data
fields compared with strings, numbers, booleans or null, or tested for existence, on
SQLite's and PostgreSQL's JSON functions, guarded by the JSON type so the kinds never mix)
becomes that clause. Any other part (`contains` on data, list or object literals, list
indexes) becomes TRUE, so the clause only narrows the candidates and Python evaluates the
whole filter on each row that passes it. When every part is exact, walks and counts run in
SQL alone.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    Numeric,
    Select,
    String,
    and_,
    case,
    cast,
    delete,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tidings.adapters.sql.engine import is_postgres, reader, writer
from tidings.adapters.sql.subscribers import SqlTopicStore
from tidings.adapters.sql.tables import segments, subscribers, topic_members
from tidings.core import segments as rules
from tidings.core.notify.conditions import All, AnyOf, Compare, Condition, Not, Op
from tidings.errors import NotFound
from tidings.ports.segments import Audience, Scan, Segment, count_by_scan, scan_candidates

_s = subscribers.c
_m = topic_members.c
_g = segments.c
_PROFILE = [_s[name] for name in (*rules.PROFILE_FIELDS, rules.DATA)]

Clause = ColumnElement[bool]


class SqlSegmentStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._read = reader(engine)
        self._insert = pg_insert if is_postgres(engine) else sqlite_insert

    async def put(self, segment: Segment) -> tuple[Segment, bool]:
        async with writer(self._engine) as conn:
            inserted = (
                await conn.execute(
                    self._insert(segments)
                    .values(_row(segment))
                    .on_conflict_do_nothing(index_elements=[_g.key])
                    .returning(_g.key)
                )
            ).one_or_none()
            if inserted is None:
                await conn.execute(
                    update(segments)
                    .where(_g.key == segment.key)
                    .values(
                        name=segment.name,
                        topic=segment.topic,
                        filter=segment.filter,
                        updated_at=segment.updated_at,
                    )
                )
            stored = await _get(conn, segment.key)
        assert stored is not None
        return stored, inserted is not None

    async def get(self, key: str) -> Segment:
        async with self._read.connect() as conn:
            found = await _get(conn, key)
        if found is None:
            raise NotFound(f"segment {key} not found")
        return found

    async def page(self, *, after: str | None, limit: int) -> list[Segment]:
        query = select(segments).order_by(_g.key).limit(limit)
        if after is not None:
            query = query.where(_g.key > after)
        async with self._read.connect() as conn:
            return [_segment(r._mapping) for r in await conn.execute(query)]

    async def delete(self, key: str) -> None:
        async with writer(self._engine) as conn:
            result = await conn.execute(delete(segments).where(_g.key == key))
        if result.rowcount == 0:
            raise NotFound(f"segment {key} not found")


class SqlAudiences:
    def __init__(self, engine: AsyncEngine) -> None:
        self._read = reader(engine)
        self._pg = is_postgres(engine)
        self._topics = SqlTopicStore(engine)
        self._compiled: tuple[Condition, Clause, bool] | None = None

    async def scan(
        self, audience: Audience, *, after: str | None, limit: int, examine: int
    ) -> Scan:
        clause, exact = self._where(audience.where)
        if exact:
            query = _candidates(audience.topic, clause, after, [_s.id]).limit(limit)
            async with self._read.connect() as conn:
                ids = [str(i) for i in (await conn.execute(query)).scalars()]
            if not ids:
                await self._check_topic(audience.topic)
            return Scan(ids, ids[-1] if ids else None, len(ids), len(ids) < limit)
        query = _candidates(audience.topic, clause, after, _PROFILE).limit(examine)
        async with self._read.connect() as conn:
            rows: list[Any] = list(await conn.execute(query))
        if not rows:
            await self._check_topic(audience.topic)
        return scan_candidates(audience.where, rows, limit=limit, examine=examine)

    async def count(self, audience: Audience) -> int:
        clause, exact = self._where(audience.where)
        if not exact:
            return await count_by_scan(self, audience)
        query = select(func.count()).select_from(
            _candidates(audience.topic, clause, None, [_s.id]).order_by(None).subquery()
        )
        async with self._read.connect() as conn:
            n = int((await conn.execute(query)).scalar_one())
        if n == 0:
            await self._check_topic(audience.topic)
        return n

    async def _check_topic(self, topic: str | None) -> None:
        """Raise `NotFound` for an unknown topic. Asked only when a read found no one: a
        topic's members are deleted with it, so one that has any exists."""
        if topic is not None:
            await self._topics.get(topic)

    def _where(self, where: Condition | None) -> tuple[Clause | None, bool]:
        """The filter in SQL. The last one compiled is kept: the steps of a walk pass the
        same audience, so a walk compiles its filter once."""
        if where is None:
            return None, True
        if self._compiled is None or self._compiled[0] is not where:
            clause, exact = compile_where(where, postgres=self._pg)
            self._compiled = (where, clause, exact)
        return self._compiled[1], self._compiled[2]


def _candidates(
    topic: str | None, clause: Clause | None, after: str | None, columns: list[Any]
) -> Select[Any]:
    """The candidates passing `clause` (None: all), in id order after `after`."""
    if topic is not None:
        key = _m.subscriber_id
        if clause is None and len(columns) == 1:
            query: Select[Any] = select(key).where(_m.topic_key == topic)
        else:
            query = (
                select(*columns)
                .select_from(topic_members.join(subscribers, _s.id == key))
                .where(_m.topic_key == topic)
            )
    else:
        key = _s.id
        query = select(*columns)
    if clause is not None:
        query = query.where(clause)
    if after is not None:
        query = query.where(key > after)
    return query.order_by(key)


# -- the filter in SQL -----------------------------------------------------------------------


def compile_where(condition: Condition, *, postgres: bool) -> tuple[Clause, bool]:
    """A clause that holds for at least every subscriber the condition holds for (never
    NULL), and whether it holds for exactly those."""
    if isinstance(condition, All):
        parts = [compile_where(c, postgres=postgres) for c in condition.items]
        return and_(true(), *(p for p, _ in parts)), all(e for _, e in parts)
    if isinstance(condition, AnyOf):
        parts = [compile_where(c, postgres=postgres) for c in condition.items]
        return or_(false(), *(p for p, _ in parts)), all(e for _, e in parts)
    if isinstance(condition, Not):
        inner, exact = compile_where(condition.item, postgres=postgres)
        return (not_(inner), True) if exact else (true(), False)
    found = _compare(condition, postgres)
    if found is None:
        return true(), False
    return func.coalesce(found, false()), True


def _compare(c: Compare, pg: bool) -> Clause | None:
    """The exact clause of one comparison (it may be NULL where the comparison is false),
    or None when SQL cannot say it exactly."""
    _, name, *rest = c.path
    if name != rules.DATA:
        return _column(_s[name], c, rest, pg)
    if not rest:
        return (true() if c.value else false()) if c.op is Op.EXISTS else None
    if any(part.isdigit() for part in rest):
        return None  # a list index in Python, an object key in SQL
    return _data(c, rest, pg)


def _column(col: ColumnElement[Any], c: Compare, rest: list[str], pg: bool) -> Clause | None:
    """Profile columns hold a string or NULL (not set: missing)."""
    if rest:  # a path below a string is missing
        return (false() if c.value else true()) if c.op is Op.EXISTS else false()
    v = c.value
    if c.op is Op.EXISTS:
        return col.is_not(None) if v else col.is_(None)
    if c.op is Op.IN:
        strings = [x for x in v if isinstance(x, str)]
        return col.in_(strings) if strings else false()
    if not isinstance(v, str):
        return false()  # a string never equals nor orders with another kind
    if c.op is Op.EQ:
        return col == v
    if c.op is Op.NE:
        return and_(col.is_not(None), col != v)
    if c.op is Op.CONTAINS:
        return (func.strpos(col, v) if pg else func.instr(col, v)) > 0
    return _order(c.op, col.collate("C") if pg else col, literal(v, String()))


def _data(c: Compare, rest: list[str], pg: bool) -> Clause | None:
    """A custom data field: its JSON type, then its value read as that type."""
    data = _s.data
    if pg:
        node = func.json_extract_path(data, *rest, type_=JSON)
        kind: ColumnElement[Any] = func.json_typeof(node)
        text: ColumnElement[Any] = func.json_extract_path_text(data, *rest)
        kinds = {"string": ["string"], "number": ["number"], "boolean": ["boolean"]}
        exists: Clause = node.is_not(None)
    else:
        path = "$" + "".join(f'."{part}"' for part in rest)
        kind = func.json_type(data, path)
        text = func.json_extract(data, path)
        kinds = {"string": ["text"], "number": ["integer", "real"], "boolean": ["true", "false"]}
        exists = kind.is_not(None)

    def number() -> ColumnElement[Any]:
        value = cast(text, Numeric) if pg else text
        return case((kind.in_(kinds["number"]), value), else_=None)

    def string() -> ColumnElement[Any]:
        value = text.collate("C") if pg else text
        return case((kind.in_(kinds["string"]), value), else_=None)

    def equal(v: Any) -> Clause | None:
        if v is None:
            return kind == "null"
        if isinstance(v, bool):
            if pg:
                return and_(kind == "boolean", text == ("true" if v else "false"))
            return kind == ("true" if v else "false")
        if isinstance(v, int | float):
            return number() == _numeric(v, pg)
        if isinstance(v, str):
            return string() == literal(v, String())
        return None  # a list or an object

    v = c.value
    if c.op is Op.EXISTS:
        return exists if v else not_(exists)
    if c.op is Op.EQ:
        return equal(v)
    if c.op is Op.IN:
        parts = [equal(x) for x in v]
        if any(p is None for p in parts):
            return None
        return or_(false(), *(func.coalesce(p, false()) for p in parts if p is not None))
    if c.op is Op.NE:
        if v is None:
            return false()  # null is never unequal to null, nor comparable with others
        same = equal(v)
        if same is None:
            return None
        if isinstance(v, bool):
            comparable: Clause = kind.in_(kinds["boolean"])
        elif isinstance(v, int | float):
            comparable = kind.in_(kinds["number"])
        else:
            comparable = kind.in_(kinds["string"])
        return and_(comparable, not_(func.coalesce(same, false())))
    if c.op is Op.CONTAINS:
        return None
    if isinstance(v, str):
        return _order(c.op, string(), literal(v, String()))
    return _order(c.op, number(), _numeric(v, pg))


def _numeric(v: int | float, pg: bool) -> ColumnElement[Any]:
    if not pg:
        return literal(v)
    return literal(Decimal(v) if isinstance(v, int) else Decimal(repr(v)), Numeric())


def _order(op: Op, left: ColumnElement[Any], right: ColumnElement[Any]) -> Clause:
    if op is Op.GT:
        return left > right
    if op is Op.GTE:
        return left >= right
    if op is Op.LT:
        return left < right
    return left <= right


async def _get(conn: AsyncConnection, key: str) -> Segment | None:
    row = (await conn.execute(select(segments).where(_g.key == key))).one_or_none()
    return None if row is None else _segment(row._mapping)


def _row(s: Segment) -> dict[str, Any]:
    return {
        "key": s.key,
        "name": s.name,
        "topic": s.topic,
        "filter": s.filter,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
    }


def _segment(m: Any) -> Segment:
    return Segment(
        key=m["key"],
        name=m["name"],
        topic=m["topic"],
        filter=m["filter"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
    )
