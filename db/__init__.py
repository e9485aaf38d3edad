"""The results database: typed tables, engine, migrations and the queries that matter."""
