"""HTTP routes, one module per resource: datasets, rewards, jobs, runs, adapters, plus meta
(health, models, the dashboard)."""
