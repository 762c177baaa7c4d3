"""secure_kv.audit: the log, its events and vectors, verify against tampering, the HTML report."""
