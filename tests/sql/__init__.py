"""secure_kv.sql: engines and the hot-path pool, schema creation and migrations."""
