from lmbench.cli import main

main()
