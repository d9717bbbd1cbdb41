"""`python -m superopt`: the command line."""

from ._cli import main

main()
