"""Work an operator starts on a whole store: rotation, erasure (shred, purge), data-key
retirement and the metadata-only inventory behind ``status`` and ``list``."""
