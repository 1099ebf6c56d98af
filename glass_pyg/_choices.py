"""The allowed values of the library's string options, defined once (and importable without torch, for the configs)."""

TEMPERATURES = ("absolute", "rank")  #: how ``gamma`` is scaled: squared score units, or the scores' spacings
GRADS = ("implicit", "unrolled")  #: how a plan is differentiated
METHODS = ("newton", "sinkhorn")  #: how the band is solved
SOLVERS = ("banded", "dense")  #: the certified band, or the reference dense Sinkhorn
CONSENSUS_MODES = ("auto", "always", "never")  #: when the graph pipeline runs the GW consensus stage
