"""``python -m secure_kv``: the ``secure-kv`` command, for when the script is not on PATH."""

from secure_kv.cli import main

main(prog_name="secure-kv")
