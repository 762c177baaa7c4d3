"""secure_kv.admin: rotation, erasure (shred, purge) and data-key retirement."""
