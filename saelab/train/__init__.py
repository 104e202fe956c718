"""Training: activations streamed from the LM through a shuffling buffer into many SAEs at once."""
