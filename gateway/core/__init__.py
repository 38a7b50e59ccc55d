"""What every room uses: configuration, errors (and their OpenAI shape), metrics, structured logs, images,
micro-batching. Imports nothing else of the gateway."""
