"""One module per top-level subcommand; ``flower_ctx.cli`` imports them only when invoked."""
