"""The timestep analysis: per-t curves, analysed runs, results, fingerprints and plots."""
