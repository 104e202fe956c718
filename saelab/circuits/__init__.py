"""Attribution graphs (issue 32): which features, at which layers and positions, carried a replacement model
to its next token. The stage after features/ and before view/: graph.py (the Graph and its files), prune.py
(influence, pruning, scores), neuronpedia.py (the circuit-tracer / Neuronpedia graph JSON), run.py and
config.py (`saelab attribute`); the lead's attribution.py / frozen.py / coders.py compute the graph."""
