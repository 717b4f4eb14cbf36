"""The consistency campaign: scenarios as data, one VM per scenario, the oracle, the reports."""
