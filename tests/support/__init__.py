"""Local servers and helpers that tests talk to over loopback."""
