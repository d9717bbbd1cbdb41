"""The tensor language of superopt: typed nodes, the op registry and the e-graph sorts."""

from . import _fused as _fused  # registers the fused ops
from . import _layout as _layout  # registers the data-movement ops
from . import _ops as _ops  # registers the ops
from ._errors import IRError as IRError
from ._errors import ShapeError as ShapeError
from ._errors import SuperoptError as SuperoptError
from ._errors import UnsupportedPrimitiveError as UnsupportedPrimitiveError
from ._layout import GatherSpec as GatherSpec
from ._node import Node as Node
from ._node import Params as Params
from ._node import Program as Program
from ._node import toposort as toposort
from ._ops import BINARY_OPS as BINARY_OPS
from ._ops import REDUCTIONS as REDUCTIONS
from ._ops import UNARY_OPS as UNARY_OPS
from ._ops import OpaqueEqn as OpaqueEqn
from ._ops import dot_precision as dot_precision
from ._ops import dtype_src as dtype_src
from ._ops import value_src as value_src
from ._registry import Cost as Cost
from ._registry import OpDef as OpDef
from ._registry import get_op as get_op
from ._registry import infer_type as infer_type
from ._registry import make as make
from ._registry import node_cost as node_cost
from ._registry import op_for_primitive as op_for_primitive
from ._registry import register_op as register_op
from ._registry import registered_ops as registered_ops
