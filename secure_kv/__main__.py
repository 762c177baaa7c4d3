from secure_kv.cli import main

main()
