"""What a module's name says: its layer (block) index, its module type and its role in a block.

One parser for the whole package, used by the records, the reports and the CLI table, so a
module is grouped the same way everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from deltaw.errors import DeltawError

#: Containers whose next dotted component is the block (layer) index.
LAYER_CONTAINERS = ("layers", "layer", "h", "blocks", "block", "resblocks")
_UNDERSCORED = re.compile(r"(?:^|_)(?:%s)_(\d+)(?:_(.+))?$" % "|".join(LAYER_CONTAINERS))
_UNDERSCORED_ANY = re.compile(r"(?:^|_)(\d+)(?:_(.+))?$")

#: Module roles in the order a transformer block uses them; a module type's role decides where
#: it sorts and how the text names it. Patterns match the end of the module type.
ROLES: list[tuple[str, str]] = [
    ("query", r"(^|[._])(q|q_proj|query|wq|to_q|q_lin)$"),
    ("key", r"(^|[._])(k|k_proj|key|wk|to_k|k_lin)$"),
    ("value", r"(^|[._])(v|v_proj|value|wv|to_v|v_lin)$"),
    ("fused QKV", r"(^|[._])(c_attn|qkv|qkv_proj|query_key_value|wqkv|in_proj)$"),
    ("attention output", r"(^|[._])(o|o_proj|out_proj|wo|to_out(\.0)?|out_lin|attention\.output\.dense|attn\.c_proj)$"),
    ("MLP gate", r"(^|[._])(gate_proj|w1|wi_0)$"),
    ("MLP up", r"(^|[._])(up_proj|fc1|c_fc|w3|wi_1|wi|intermediate\.dense|dense_h_to_4h|lin1)$"),
    ("MLP down", r"(^|[._])(down_proj|fc2|w2|mlp\.c_proj|output\.dense|dense_4h_to_h|lin2)$"),
]


def parse_module_name(name: str) -> tuple[int | None, str]:
    """(layer, module type) of a module name.

    The layer is the first integer component that follows a container (``layers``, ``layer``,
    ``h``, ``blocks``, ``block``), else the first integer component at all; the module type is
    what follows it. kohya names, whose dots became underscores, are read the same way on ``_``.

    >>> parse_module_name("model.layers.11.self_attn.q_proj")
    (11, 'self_attn.q_proj')
    >>> parse_module_name("encoder.layer.3.attention.self.query")
    (3, 'attention.self.query')
    >>> parse_module_name("lora_te_text_model_encoder_layers_0_self_attn_q_proj")
    (0, 'self_attn_q_proj')
    >>> parse_module_name("lm_head")
    (None, 'lm_head')
    """
    parts = name.split(".")
    if len(parts) > 1:
        numbered = [i for i, p in enumerate(parts) if p.isdigit()]
        after_container = [i for i in numbered if i > 0 and parts[i - 1] in LAYER_CONTAINERS]
        if not numbered:
            return None, name
        i = (after_container or numbered)[0]
        return int(parts[i]), ".".join(parts[i + 1:]) or name
    for pattern in (_UNDERSCORED, _UNDERSCORED_ANY):
        match = pattern.search(name)
        if match:
            return int(match.group(1)), match.group(2) or name
    return None, name


def role_of(module_type: str) -> str | None:
    """The role (``"query"``, ``"value"``, ``"MLP down"`` …) of a module type, or None.

    >>> role_of("attention.self.query"), role_of("self_attn_v_proj"), role_of("lm_head")
    ('query', 'value', None)
    """
    for role, pattern in ROLES:
        if re.search(pattern, module_type, flags=re.IGNORECASE):
            return role
    return None


def type_sort_key(module_type: str) -> tuple[int, str]:
    """Sort key putting module types in block order (q, k, v, o, MLP), unknown ones last."""
    role = role_of(module_type)
    order = [r for r, _ in ROLES]
    return (order.index(role) if role in order else len(order), module_type)


def module_filter(modules: str | None):
    """The compiled ``--modules`` regular expression (None keeps every module).

    Raises
    ------
    DeltawError
        When ``modules`` is not a str or not a valid regular expression.
    """
    if modules is None:
        return None
    if not isinstance(modules, str):
        names = list(modules) if isinstance(modules, (list, tuple)) else []
        hint = (f", e.g. {'|'.join(names)!r} for any of these" if names and all(isinstance(m, str) for m in names)
                else " (matched with re.search against module names)")
        raise DeltawError(f"modules is {modules!r}, not a str; give one regular expression{hint}")
    try:
        return re.compile(modules)
    except re.error as err:
        raise DeltawError(f"--modules {modules!r} is not a valid regular expression ({err})") from err


def shared_names(name_lists: Iterable[Iterable[str]], modules: str | None = None) -> list[str]:
    """Module names that at least two of ``name_lists`` hold and ``--modules`` matches, in order
    of first appearance.

    Raises
    ------
    DeltawError
        When no module is shared: almost always checkpoints of different base models.
    """
    pattern = module_filter(modules)
    counts: dict[str, int] = {}
    for names in name_lists:
        for name in names:
            if pattern is None or pattern.search(name):
                counts[name] = counts.get(name, 0) + 1
    shared = [name for name, count in counts.items() if count >= 2]
    if not shared:
        what = f" matching {modules!r}" if modules is not None else ""
        raise DeltawError(f"the checkpoints share no module{what}; are they adapters or fine-tunes of the same "
                          "base model? (full fine-tunes need --base)")
    return shared
