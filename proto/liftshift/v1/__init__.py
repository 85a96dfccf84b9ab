"""Generated protobuf and gRPC modules of the liftshift v1 contracts (``make proto``)."""
