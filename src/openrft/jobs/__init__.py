"""Durable jobs: the queue (state in the server's SQLite store) and the worker that runs each job's
training in its own process (`openrft.jobs.child`)."""
