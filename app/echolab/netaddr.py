"""Addresses as people read them. Standard library only and import-free: the forking parent
imports this module, and every module it imports is paid again on every fork."""


def format_address(host: str, port: int) -> str:
    """HOST:PORT, with brackets around an IPv6 literal."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
