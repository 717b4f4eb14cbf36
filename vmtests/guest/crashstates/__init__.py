"""Crash states from a write log (issue 17): record a snapkit lifecycle under dm-log-writes,
replay the log to each durable point and judge every state in the same guest."""
