"""`python -m train`: the command-line entry point of descend (see README)."""

from descend.cli import main

if __name__ == "__main__":
    main()
