from sqlalchemy import inspect


def test_migrations_create_every_table(engine):
    names = set(inspect(engine).get_table_names())
    assert {"resource", "resource_history", "sp_token", "sp_string", "sp_date",
            "sp_reference", "alembic_version"} <= names
