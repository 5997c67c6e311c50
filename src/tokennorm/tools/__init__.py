"""tokennorm tools."""
