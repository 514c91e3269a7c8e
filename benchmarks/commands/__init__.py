"""``augbench`` subcommands, one per module."""
