from anytimectl.cli import main

main()
