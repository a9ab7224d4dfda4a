"""The service layer: a run's lifecycle and steps against the ports, dead letters, outputs."""
