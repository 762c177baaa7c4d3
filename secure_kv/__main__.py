from secure_kv.cli import main

main(prog_name="secure-kv")
