"""Stand-ins for external services, for tests and local development (not used by the
training or export code): ``serving``, a loopback TF Serving (gRPC PredictionService and
REST API) backed by an exported SavedModel."""
