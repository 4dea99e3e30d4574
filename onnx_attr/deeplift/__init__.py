"""DeepLift: op kinds, the rewrite into DeepLift-aware ops, their rules, and the two-pass engine."""
