"""One package per target server (cws, openemr, openehr), each its library, cli/ and sandbox/.

Dependency rule: a target library imports core and protocols, never another target, cli or sandbox;
its cli/ adds the cli framework and its own library; its sandbox/ imports cwsctl.sandbox,
protocols and core, never its own library. cwsctl.registry names each target."""
