"""The secure-kv command (secure_kv.cli over secure_kv.commands): output, errors, interrupts, completion."""
