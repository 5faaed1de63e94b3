"""The target-neutral commands (keygen, keys, profile, request, patients, doctor, audit, demo,
sandbox); they reach a target only through cwsctl.registry (and its option aliases)."""
