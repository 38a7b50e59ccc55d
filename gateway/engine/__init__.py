"""What happens to a request: ``runtime.Gateway`` builds the services and has one entry point per endpoint
family; ``accounting`` admits and records; ``chat`` resolves or routes, fails over and runs the stages; the rest
are the parts they use (pool, routing, pipeline, circuit, limits, auth, rerank, audio in chat). No HTTP here."""
