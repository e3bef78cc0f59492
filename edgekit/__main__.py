"""`python -m edgekit` runs the command line."""

from edgekit._entry import main

main()
