"""One module per `edgekit` subcommand; each imports its heavy dependencies only when it runs."""
