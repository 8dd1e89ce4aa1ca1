"""The facts the helper processes share: where they are stored (diskcache or Redis), their
keys and lifetimes."""
