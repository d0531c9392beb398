"""Stage two: the tuner, its training from the stores, the layer analysis, the sweeps, the scaling curve, the adapter
baseline, and encoding a corpus into an index."""
