"""repos.yaml (and the original repoproxy's INI form): parsing and validation."""
