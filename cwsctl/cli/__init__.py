"""The command-line interface: argument parsing and presentation over ``cwsctl.core``."""
