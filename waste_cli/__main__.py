"""`python -m waste_cli` runs the same command as `wastecls` (and is what torchrun launches)."""

from waste_cli.cli.app import main

if __name__ == "__main__":
    main()
