from chit.cli import main

main()
