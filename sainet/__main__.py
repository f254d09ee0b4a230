from sainet.cli import main

main()
