"""servesim dashboard."""
