from alembic import context

from fhirgw.store.tables import metadata

target_metadata = metadata
connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=target_metadata)
with context.begin_transaction():
    context.run_migrations()
