"""Region health: the policy, the ledger of live agents, summaries, snapshots, directives."""
