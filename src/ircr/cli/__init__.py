"""Command-line interface: one module per subcommand; each only parses and calls the library."""
