from neoc.cli import main

main()
