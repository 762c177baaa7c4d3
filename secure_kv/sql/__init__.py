"""Everything that speaks SQL: engines and pools, the compiled statements, the schema and
its migrations. Nothing above this package writes a statement of its own."""
