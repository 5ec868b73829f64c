"""Storage: SQLAlchemy tables, migrations, and the Repository (one unit of work per request)."""
