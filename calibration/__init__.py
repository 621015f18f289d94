"""servesim calibration."""
