"""The YAML reader of recipes and ``--set`` values: PyYAML's safe loader, with the floats people type.

PyYAML implements YAML 1.1, whose float pattern needs a dot and a signed exponent: ``1e-3``,
``5e2`` and ``1E-3`` come back as strings, so ``lr: 1e-3`` would be refused as "not a float".
This loader reads every decimal float a person writes (``1e-3``, ``1E-3``, ``5e2``, ``.5``,
``1.``, ``+1e-3``, ``-2.5e-4``, ``1_000.5``) as a float, and leaves integers (``3``, ``0x1f``,
``1_000``) integers. ``.inf`` and ``.nan`` stay YAML's spelling of the non-finite values; the
settings refuse them (see :func:`lbgat.structured.coerce`). Nothing in a file becomes a Python object.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

FLOAT_TAG = "tag:yaml.org,2002:float"

# YAML 1.1's float forms, with the exponent's sign and the mantissa's dot made optional (YAML 1.2).
FLOAT_PATTERN = re.compile(r"""^(?:
    [-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?   # 1.5  1.  .5  2.5e-4
  | [-+]?[0-9][0-9_]*[eE][-+]?[0-9]+                                    # 1e-3  5E2
  | [-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*                         # 1:30.5 (YAML 1.1 base 60)
  | [-+]?\.(?:inf|Inf|INF)
  | \.(?:nan|NaN|NAN)
)$""", re.VERBOSE)


class RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with :data:`FLOAT_PATTERN` in place of YAML 1.1's float resolver."""


# A copy of the safe loader's resolvers (add_implicit_resolver would append after the old float rule).
RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != FLOAT_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.add_implicit_resolver(FLOAT_TAG, FLOAT_PATTERN, list("-+0123456789."))


def load(text: str) -> Any:
    """The YAML document in ``text`` (plain data only); raises ``yaml.YAMLError`` if it is not YAML."""
    return yaml.load(text, Loader=RecipeLoader)  # noqa: S506 (a subclass of SafeLoader)
