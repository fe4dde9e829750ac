"""Services from a compose file: read as the Compose Specification says (``compose``,
``interpolate``), started in dependency order (``order``) and run as one stack (``stack``),
through the session's own builder, readiness and cleanup."""
