"""Feature-interaction layers: ``B x T x D`` feature tokens -> ``B x K x out_dim`` (one representation per task).

Shapes follow the glossary in ``ranker/__init__.py``: B batch, T tokens entering the interaction (dense, then
sparse, then image tokens, in the caller's fixed order), D token width, K tasks, H heads; attention layers also
use S = T + K (with the task tokens) and Q (rows a layer updates).

Every interaction is built by ``create(name, num_tokens=T, dim=D, num_tasks=K, **hyper_parameters)`` and has an
``out_dim`` attribute; ``hyper_parameters(name)`` lists what a config may set. Registered: ``hiformer``,
``hetero_attention``, ``transformer``, ``dcnv2`` (needs torchrec), ``dlrm``.
"""

from ranker.interactions import baselines, hiformer  # noqa: F401  (importing registers the factories)
from ranker.interactions._registry import create, hyper_parameters, list_names, register

__all__ = ["create", "hyper_parameters", "list_names", "register"]
