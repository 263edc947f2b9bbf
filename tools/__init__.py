"""Local development and test tooling (not deployed: see .funcignore)."""
