"""The `jdiffseg` command: dispatch, flag parsing, one thin module per subcommand."""
