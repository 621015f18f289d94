"""servesim hardware."""
