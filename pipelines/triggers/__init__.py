"""What starts runs besides an operator's request: product events (systematic), cron, reprocessing campaigns."""
