"""OAuth2 pieces client and sandbox both speak: private_key_jwt client assertions (RFC 7523),
tokens and their cache, grants, the bearer ``httpx.Auth``, PKCE and the loopback sign-in.
Imports only ``cwsctl.core``; what a server means by its answers is passed in by its target.
"""
