"""Alembic environment: runs on the connection :mod:`db.migrate` passes in.

Without one (the ``alembic`` command line, e.g. to autogenerate a revision with
``-x url=sqlite:///tmp/x.db``) it connects to the ``url`` given with ``-x``.
SQLite migrations use batch mode (table copy-and-move) so ALTERs work there too.
"""

from __future__ import annotations

from alembic import context

from db.schema import Base, UTCDateTime


def _render_item(type_: str, obj: object, autogen_context: object) -> str | bool:
    """Render our UTC column type as its plain ``sa.DateTime`` so revisions stay frozen."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime()"
    return False


def _run(connection) -> None:
    context.configure(
        render_item=_render_item,
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from db.engine import create_engine

    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("pass the database with: alembic -x url=DATABASE_URL ...")
    engine = create_engine(url)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported")
run_migrations_online()
