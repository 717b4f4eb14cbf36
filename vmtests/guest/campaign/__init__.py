"""Guest side of the campaign: the scenario runner, the ledger writers, the checks."""
