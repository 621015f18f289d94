"""servesim policies."""
