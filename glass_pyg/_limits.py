"""The one size limit of the library: the number of pairs ``n * m`` up to which a dense ``n x m`` matrix is formed.

At ``2^22`` pairs a float64 matrix is 32 MiB. Below it, the dense forms are the
robust and fast ones: scipy's dense assignment (exact even with the ties of
structurally equivalent nodes), dense neighbourhood votes, dense BLAS products
in the consensus stage, the dense merge of a plan's slices. Beyond it every
one of them has a sparse path.
"""

DENSE_PAIRS = 1 << 22
