"""Allow ``python -m cwsctl``."""

from cwsctl.cli.main import main

if __name__ == "__main__":
    main()
