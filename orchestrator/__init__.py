"""ttc orchestrator: core types, budget, trace, backends, runner and the CLI."""
