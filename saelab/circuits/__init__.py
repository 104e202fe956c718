"""Attribution graphs of a replacement model: the graph, its pruning, interventions that check it."""
