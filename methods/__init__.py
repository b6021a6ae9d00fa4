"""Method plugins: one module per method family; importing this package registers them."""

from methods import byol, moco, reference, simclr, simsiam, swav  # noqa: F401
from methods.base import Method, get_method, list_methods, register  # noqa: F401
