"""The cws commands (sign, verify, profile trust, the keys rotate check, the demo). Imports the cli
framework, the cws library, protocols and core."""
