"""The study driver and sweeps."""
