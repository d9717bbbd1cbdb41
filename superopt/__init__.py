"""superopt: an embedded superoptimizer for JAX."""

from . import ir as ir
from ._codegen import render as render
from ._codegen import to_callable as to_callable
from ._errors import CacheError as CacheError
from ._errors import IRError as IRError
from ._errors import SearchError as SearchError
from ._errors import ShapeError as ShapeError
from ._errors import SignatureError as SignatureError
from ._errors import SuperoptError as SuperoptError
from ._errors import TraceError as TraceError
from ._errors import UnsupportedPrimitiveError as UnsupportedPrimitiveError
from ._errors import VerificationError as VerificationError
from ._trace import Traced as Traced
from ._trace import trace as trace
