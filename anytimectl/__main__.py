from anytimectl.cli.app import main

main()
