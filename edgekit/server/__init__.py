"""The rollout server: TUF repository, telemetry ingest, gates, admin API and dashboard."""
