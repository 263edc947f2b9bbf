"""HTTP blueprints, one per area. Handlers parse, call a service function and render; nothing more."""
