from prismn.cli import main

main()
