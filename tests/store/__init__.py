"""SecureStore and Workspace: calls, batches, expiry, data keys, concurrency, tampered rows,
the plugin-storage contract."""
